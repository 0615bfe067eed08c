
/*
 * ngx_http_sf_oauth_module: puts a cached Salesforce OAuth access token on
 * every request proxied to Salesforce, and gets it with the refresh-token,
 * JWT bearer or client-credentials grant, one token request at a time for
 * all workers (and, with Redis, for the fleet).
 *
 * This file holds the module definition, the directives and the variables.
 * The work is done in src/: HACKING.md has the map.  It is over a thousand
 * lines and one concern all the same, nginx's interface to the module: the
 * directives' handlers, the configurations' create, merge and init, the
 * module and process hooks, and the variables; the blocks' parameters are
 * read in src/ (credential.c, redis_conf.c, block.c).
 */


#include "ngx_http_sf_oauth.h"


static ngx_int_t ngx_http_sf_oauth_add_variables(ngx_conf_t *cf);
static void *ngx_http_sf_oauth_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_sf_oauth_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_sf_oauth_create_loc_conf(ngx_conf_t *cf);
static void ngx_http_sf_oauth_check_cometd(ngx_conf_t *cf,
    ngx_http_sf_oauth_loc_conf_t *conf, ngx_http_core_loc_conf_t *clcf);
static void ngx_http_sf_oauth_check_intercept(ngx_conf_t *cf,
    ngx_http_sf_oauth_loc_conf_t *conf, ngx_http_core_loc_conf_t *clcf);
static char *ngx_http_sf_oauth_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_http_sf_oauth_cred_t *ngx_http_sf_oauth_find_credential(
    ngx_conf_t *cf, ngx_http_sf_oauth_loc_conf_t *conf);
static ngx_int_t ngx_http_sf_oauth_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_sf_oauth_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_sf_oauth_init_process(ngx_cycle_t *cycle);
static void ngx_http_sf_oauth_exit_process(ngx_cycle_t *cycle);

static char *ngx_http_sf_oauth_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_sf_oauth_credential(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_sf_oauth_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_sf_oauth_name_chars(ngx_str_t *name);
static char *ngx_http_sf_oauth(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_sf_oauth_info(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_sf_oauth_console(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_sf_oauth_inflate_limit(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);

static ngx_int_t ngx_http_sf_oauth_token_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_sf_oauth_instance_url_variable(
    ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_sf_oauth_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


static ngx_command_t  ngx_http_sf_oauth_commands[] = {

    { ngx_string("sf_oauth_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_sf_oauth_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("sf_oauth_credential"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_BLOCK|NGX_CONF_TAKE1,
      ngx_http_sf_oauth_credential,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("sf_oauth_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_BLOCK|NGX_CONF_TAKE1,
      ngx_http_sf_oauth_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("sf_oauth"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_sf_oauth,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("sf_oauth_soap_login"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_sf_oauth_loc_conf_t, soap_login),
      NULL },

    { ngx_string("sf_oauth_soap_inflate_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF
                        |NGX_CONF_TAKE12,
      ngx_http_sf_oauth_inflate_limit,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("sf_oauth_info"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_sf_oauth_info,
      0,
      0,
      NULL },

    { ngx_string("sf_oauth_console"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_sf_oauth_console,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_sf_oauth_module_ctx = {
    ngx_http_sf_oauth_add_variables,       /* preconfiguration */
    ngx_http_sf_oauth_init,                /* postconfiguration */

    ngx_http_sf_oauth_create_main_conf,    /* create main configuration */
    ngx_http_sf_oauth_init_main_conf,      /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_sf_oauth_create_loc_conf,     /* create location configuration */
    ngx_http_sf_oauth_merge_loc_conf       /* merge location configuration */
};


ngx_module_t  ngx_http_sf_oauth_module = {
    NGX_MODULE_V1,
    &ngx_http_sf_oauth_module_ctx,         /* module context */
    ngx_http_sf_oauth_commands,            /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_sf_oauth_init_module,         /* init module */
    ngx_http_sf_oauth_init_process,        /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_sf_oauth_exit_process,        /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_variable_t  ngx_http_sf_oauth_vars[] = {

    { ngx_string("sf_oauth_token"), NULL,
      ngx_http_sf_oauth_token_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("sf_oauth_instance_url"), NULL,
      ngx_http_sf_oauth_instance_url_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("sf_oauth_status"), NULL,
      ngx_http_sf_oauth_status_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    /* the client's own header, never the token: see the handler */
    { ngx_string("http_authorization"), NULL,
      ngx_http_sf_oauth_handler_authorization_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    /* the same for the Pub/Sub API's metadata */
    { ngx_string("http_accesstoken"), NULL,
      ngx_http_sf_oauth_handler_accesstoken_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_str_t  ngx_http_sf_oauth_statuses[] = {
    ngx_null_string,
    ngx_string("HIT"),
    ngx_string("WAIT"),
    ngx_string("ERROR"),
    ngx_string("RETRY")
};


static char *
ngx_http_sf_oauth_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_sf_oauth_main_conf_t *smcf = conf;

    u_char                    *p;
    ssize_t                    size;
    ngx_str_t                 *value, name, s, state, key, redis;
    ngx_uint_t                 i;
    ngx_shm_zone_t            *shm_zone, **zp;
    ngx_http_sf_oauth_zone_t  *zone, *other;

    value = cf->args->elts;

    size = 0;
    name.len = 0;
    ngx_str_null(&state);
    ngx_str_null(&key);
    ngx_str_null(&redis);

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {

            name.data = value[i].data + 5;

            p = (u_char *) ngx_strchr(name.data, ':');

            if (p == NULL) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone size \"%V\": expected "
                                   "zone=NAME:SIZE", &value[i]);
                return NGX_CONF_ERROR;
            }

            name.len = p - name.data;

            s.data = p + 1;
            s.len = value[i].data + value[i].len - s.data;

            size = ngx_parse_size(&s);

            if (size == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone size \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            if (size < (ssize_t) (8 * ngx_pagesize)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "zone \"%V\" is too small: it needs at "
                                   "least %uzk", &value[i],
                                   8 * ngx_pagesize / 1024);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "state=", 6) == 0
            && value[i].len > 6)
        {
            state.data = value[i].data + 6;
            state.len = value[i].len - 6;
            continue;
        }

        if (ngx_strncmp(value[i].data, "key=", 4) == 0 && value[i].len > 4) {
            key.data = value[i].data + 4;
            key.len = value[i].len - 4;
            continue;
        }

        if (ngx_strncmp(value[i].data, "redis=", 6) == 0
            && value[i].len > 6)
        {
            redis.data = value[i].data + 6;
            redis.len = value[i].len - 6;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (state.len && key.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"state=\" and \"key=\" of sf_oauth_zone go "
                           "together: the state file is always encrypted");
        return NGX_CONF_ERROR;
    }

    if (redis.len && key.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"redis=\" of sf_oauth_zone needs \"key=\": "
                           "what goes to Redis is always encrypted");
        return NGX_CONF_ERROR;
    }

    if (key.len && state.len == 0 && redis.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"state=\" and \"key=\" of sf_oauth_zone go "
                           "together, or \"redis=\" and \"key=\"");
        return NGX_CONF_ERROR;
    }

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must have \"zone=NAME:SIZE\" parameter",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    /* the name goes into logs and sf_oauth_info: as a credential's name */

    if (name.len > NGX_HTTP_SF_OAUTH_ZONE_NAME_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid sf_oauth_zone name \"%*s...\": it must "
                           "have 1 to %d characters, not %uz",
                           (size_t) NGX_HTTP_SF_OAUTH_ZONE_NAME_MAX,
                           name.data, NGX_HTTP_SF_OAUTH_ZONE_NAME_MAX,
                           name.len);
        return NGX_CONF_ERROR;
    }

    if (!ngx_http_sf_oauth_name_chars(&name)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid sf_oauth_zone name \"%V\": use "
                           "letters, digits, \"_\", \"-\" and \".\"",
                           &name);
        return NGX_CONF_ERROR;
    }

    shm_zone = ngx_shared_memory_add(cf, &name, size,
                                     &ngx_http_sf_oauth_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate sf_oauth_zone \"%V\"", &name);
        return NGX_CONF_ERROR;
    }

    zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_sf_oauth_zone_t));
    if (zone == NULL) {
        return NGX_CONF_ERROR;
    }

    zone->name = name;
    zone->redis_name = redis;

    if (key.len
        && ngx_http_sf_oauth_state_conf(cf, zone, &state, &key)
           != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    /* each zone writes its whole state file: two would wipe each other's */

    zp = smcf->zones.elts;

    for (i = 0; zone->state_path.len && i < smcf->zones.nelts; i++) {
        other = zp[i]->data;

        if (other->state_path.len
            && ngx_http_sf_oauth_state_same(&other->state_path,
                                            &zone->state_path))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "sf_oauth_zone \"%V\" has the state file "
                               "\"%V\" of sf_oauth_zone \"%V\" (\"%V\"): "
                               "each zone writes its whole state, and would "
                               "wipe the other's refresh tokens; give each "
                               "zone a state file of its own",
                               &zone->name, &zone->state_path, &other->name,
                               &other->state_path);
            return NGX_CONF_ERROR;
        }
    }

    if (ngx_array_init(&zone->creds, cf->pool, 4,
                       sizeof(ngx_http_sf_oauth_cred_t *))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_sf_oauth_zone_init;
    shm_zone->data = zone;

    if (ngx_http_sf_oauth_carry_conf(cf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    zp = ngx_array_push(&smcf->zones);
    if (zp == NULL) {
        return NGX_CONF_ERROR;
    }

    *zp = shm_zone;

    return NGX_CONF_OK;
}


/* the names of zones and credentials go into logs and JSON as they are */

static ngx_int_t
ngx_http_sf_oauth_name_chars(ngx_str_t *name)
{
    ngx_uint_t  i;

    for (i = 0; i < name->len; i++) {
        if (!(isalnum(name->data[i]) || name->data[i] == '_'
              || name->data[i] == '-' || name->data[i] == '.'))
        {
            return 0;
        }
    }

    return 1;
}


static char *
ngx_http_sf_oauth_credential(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_sf_oauth_main_conf_t *smcf = conf;

    char                       *rv;
    ngx_str_t                  *value;
    ngx_uint_t                  i;
    ngx_http_sf_oauth_cred_t   *cred, **cp;

    value = cf->args->elts;

    if (value[1].len == 0 || value[1].len > NGX_HTTP_SF_OAUTH_NAME_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid sf_oauth_credential name \"%V\": it "
                           "must have 1 to %d characters", &value[1],
                           NGX_HTTP_SF_OAUTH_NAME_MAX);
        return NGX_CONF_ERROR;
    }

    if (!ngx_http_sf_oauth_name_chars(&value[1])) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid sf_oauth_credential name \"%V\": "
                           "use letters, digits, \"_\", \"-\" and \".\"",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    cp = smcf->creds.elts;

    for (i = 0; i < smcf->creds.nelts; i++) {
        if (cp[i]->name.len == value[1].len
            && ngx_strncmp(cp[i]->name.data, value[1].data, value[1].len)
               == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate sf_oauth_credential \"%V\", "
                               "first defined in %s:%ui",
                               &value[1], cp[i]->file, cp[i]->line);
            return NGX_CONF_ERROR;
        }
    }

    cred = ngx_pcalloc(cf->pool, sizeof(ngx_http_sf_oauth_cred_t));
    if (cred == NULL) {
        return NGX_CONF_ERROR;
    }

    cred->name = value[1];
    cred->file = cf->conf_file->file.name.data;
    cred->line = cf->conf_file->line;
    ngx_queue_init(&cred->rt.waiters);

    rv = ngx_http_sf_oauth_credential_block(cf, cred);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    cp = ngx_array_push(&smcf->creds);
    if (cp == NULL) {
        return NGX_CONF_ERROR;
    }

    *cp = cred;

    return NGX_CONF_OK;
}


static char *
ngx_http_sf_oauth_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_sf_oauth_main_conf_t *smcf = conf;

    ngx_str_t                   *value;
    ngx_uint_t                   i;
    ngx_http_sf_oauth_redis_t   *rd, **rp;

    value = cf->args->elts;

    if (!ngx_http_sf_oauth_name_chars(&value[1])
        || value[1].len > NGX_HTTP_SF_OAUTH_NAME_MAX)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid sf_oauth_redis name \"%V\": use "
                           "letters, digits, \"_\", \"-\" and \".\", at most "
                           "%d", &value[1], NGX_HTTP_SF_OAUTH_NAME_MAX);
        return NGX_CONF_ERROR;
    }

    rp = smcf->redis.elts;

    for (i = 0; i < smcf->redis.nelts; i++) {
        if (rp[i]->name.len == value[1].len
            && ngx_strncmp(rp[i]->name.data, value[1].data, value[1].len)
               == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate sf_oauth_redis \"%V\"",
                               &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    rd = ngx_pcalloc(cf->pool, sizeof(ngx_http_sf_oauth_redis_t));
    if (rd == NULL) {
        return NGX_CONF_ERROR;
    }

    rd->name = value[1];
    rd->file = cf->conf_file->file.name.data;
    rd->line = cf->conf_file->line;

    if (ngx_http_sf_oauth_redis_conf_block(cf, rd) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    rp = ngx_array_push(&smcf->redis);
    if (rp == NULL) {
        return NGX_CONF_ERROR;
    }

    *rp = rd;

    return NGX_CONF_OK;
}


static char *
ngx_http_sf_oauth(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_sf_oauth_loc_conf_t *slcf = conf;

    ngx_str_t                         *value;
    ngx_http_compile_complex_value_t   ccv;

    if (slcf->cred != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "empty \"sf_oauth\": name a credential, a "
                           "variable, or \"off\"");
        return NGX_CONF_ERROR;
    }

    if (ngx_strcmp(value[1].data, "off") == 0) {
        slcf->cred = NULL;
        return NGX_CONF_OK;
    }

    /* credentials may be defined after use: resolved in merge */
    slcf->cred = NULL;
    slcf->name = value[1];
    slcf->file = cf->conf_file->file.name.data;
    slcf->line = cf->conf_file->line;

    if (ngx_http_script_variables_count(&value[1]) == 0) {
        return NGX_CONF_OK;
    }

    /* "sf_oauth $variable": the value names the credential per request */

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = ngx_palloc(cf->pool,
                                   sizeof(ngx_http_complex_value_t));
    if (ccv.complex_value == NULL) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    slcf->value = ccv.complex_value;

    return NGX_CONF_OK;
}


static char *
ngx_http_sf_oauth_info(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_sf_oauth_status_handler;

    return NGX_CONF_OK;
}


/*
 * sf_oauth_console: the operator console at the location, a prefix
 * location, whose own URI is the console's page.
 */

static char *
ngx_http_sf_oauth_console(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t       *clcf;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->named
#if (NGX_PCRE)
        || clcf->regex
#endif
       )
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"sf_oauth_console\" must be in a prefix or "
                           "exact location, such as \"location /sf_oauth/\"");
        return NGX_CONF_ERROR;
    }

    clcf->handler = ngx_http_sf_oauth_console_handler;

    smcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_sf_oauth_module);
    smcf->console = 1;

    /* the web server flow's zone, for the Connect buttons */
    return ngx_http_sf_oauth_connect_conf(cf);
}


/*
 * sf_oauth_soap_inflate_limit size [ratio]: a gzip-compressed SOAP
 * envelope inflates to at most "size" bytes, and to at most "ratio" times
 * its compressed size beyond the first NGX_HTTP_SF_OAUTH_INFLATE_FREE
 * bytes; client_max_body_size, when it is not 0, bounds it too.
 */

static char *
ngx_http_sf_oauth_inflate_limit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_sf_oauth_loc_conf_t *slcf = conf;

    ngx_int_t   ratio;
    ngx_str_t  *value;

    if (slcf->inflate_max != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    slcf->inflate_max = ngx_parse_offset(&value[1]);

    if (slcf->inflate_max == NGX_ERROR || slcf->inflate_max == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid size \"%V\" in \"%V\": give the most "
                           "that a gzip-compressed SOAP envelope may inflate "
                           "to, more than 0, such as 50m", &value[1],
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (cf->args->nelts == 2) {
        return NGX_CONF_OK;
    }

    ratio = ngx_atoi(value[2].data, value[2].len);

    if (ratio == NGX_ERROR || ratio < 1 || ratio > 100000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid ratio \"%V\" in \"%V\": give how many "
                           "times its compressed size a gzip-compressed SOAP "
                           "envelope may inflate to, a whole number from 1 "
                           "to 100000, such as 100", &value[2], &cmd->name);
        return NGX_CONF_ERROR;
    }

    slcf->inflate_ratio = ratio;

    return NGX_CONF_OK;
}


static void *
ngx_http_sf_oauth_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_sf_oauth_main_conf_t  *smcf;

    smcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_sf_oauth_main_conf_t));
    if (smcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&smcf->creds, cf->pool, 4,
                       sizeof(ngx_http_sf_oauth_cred_t *))
        != NGX_OK
        || ngx_array_init(&smcf->zones, cf->pool, 2,
                          sizeof(ngx_shm_zone_t *))
           != NGX_OK
        || ngx_array_init(&smcf->redis, cf->pool, 1,
                          sizeof(ngx_http_sf_oauth_redis_t *))
           != NGX_OK)
    {
        return NULL;
    }

    return smcf;
}


static char *
ngx_http_sf_oauth_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_sf_oauth_main_conf_t *smcf = conf;

    ngx_uint_t                  i, j;
    ngx_shm_zone_t            **zp;
    ngx_http_sf_oauth_zone_t   *zone;
    ngx_http_sf_oauth_redis_t **rd;
    ngx_http_sf_oauth_cred_t  **cred, **cp;

    cred = smcf->creds.elts;

    for (i = 0; i < smcf->creds.nelts; i++) {

        zone = cred[i]->shm_zone->data;

        if (zone == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "sf_oauth_credential \"%V\" uses unknown zone "
                          "\"%V\": declare it with \"sf_oauth_zone "
                          "zone=%V:1m;\" in %s:%ui", &cred[i]->name,
                          &cred[i]->zone_name, &cred[i]->zone_name,
                          cred[i]->file, cred[i]->line);
            return NGX_CONF_ERROR;
        }

        cp = ngx_array_push(&zone->creds);
        if (cp == NULL) {
            return NGX_CONF_ERROR;
        }

        *cp = cred[i];

        if (cred[i]->not_connected.len == 0) {
            continue;
        }

        /* not connected: the console's web server flow connects it */

        if (!smcf->console) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "sf_oauth_credential \"%V\" in %s:%ui has no "
                          "refresh_token: set refresh_token or "
                          "refresh_token_file, or add an sf_oauth_console "
                          "location to connect it", &cred[i]->name,
                          cred[i]->file, cred[i]->line);
            return NGX_CONF_ERROR;
        }

        if (zone->state_path.len == 0) {
            ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                          "the refresh token a connection gets for "
                          "credential \"%V\" is lost at restart: set "
                          "state= on sf_oauth_zone \"%V\"", &cred[i]->name,
                          &zone->name);
        }
    }

    if (ngx_http_sf_oauth_credential_unique(cf, smcf) != NGX_OK
        || ngx_http_sf_oauth_credential_names(cf, smcf) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    /* the fleet of each zone with redis= */

    zp = smcf->zones.elts;
    rd = smcf->redis.elts;

    for (i = 0; i < smcf->zones.nelts; i++) {
        zone = zp[i]->data;

        if (zone->redis_name.len == 0) {
            continue;
        }

        for (j = 0; j < smcf->redis.nelts; j++) {
            if (rd[j]->name.len == zone->redis_name.len
                && ngx_strncmp(rd[j]->name.data, zone->redis_name.data,
                               zone->redis_name.len) == 0)
            {
                zone->redis = rd[j];
                break;
            }
        }

        if (zone->redis == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "sf_oauth_zone \"%V\" uses unknown "
                          "sf_oauth_redis \"%V\"", &zone->name,
                          &zone->redis_name);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_sf_oauth_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_sf_oauth_loc_conf_t  *slcf;

    slcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_sf_oauth_loc_conf_t));
    if (slcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     slcf->value = NULL;
     *     slcf->handler = NULL;
     *     slcf->name = { 0, NULL };
     *     slcf->file = NULL;
     *     slcf->line = 0;
     */

    slcf->cred = NGX_CONF_UNSET_PTR;
    slcf->soap_login = NGX_CONF_UNSET;
    slcf->inflate_max = NGX_CONF_UNSET;
    slcf->inflate_ratio = NGX_CONF_UNSET_UINT;

    return slcf;
}


/*
 * With proxy_intercept_errors and an error_page for 500 or 400, a SOAP
 * 500 or a Bulk 1.0 400 never reaches the response filter: a dead SOAP or
 * Bulk session would not be cured in this location.  nginx -t says so.
 */

static void
ngx_http_sf_oauth_check_intercept(ngx_conf_t *cf,
    ngx_http_sf_oauth_loc_conf_t *conf, ngx_http_core_loc_conf_t *clcf)
{
    ngx_uint_t                 i;
    ngx_http_err_page_t       *err;
    ngx_http_upstream_conf_t  *ucf;

    /* ngx_http_proxy_loc_conf_t starts with its ngx_http_upstream_conf_t */
    ucf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_proxy_module);

    if (ucf == NULL || ucf->intercept_errors != 1
        || clcf->error_pages == NULL)
    {
        return;
    }

    err = clcf->error_pages->elts;

    for (i = 0; i < clcf->error_pages->nelts; i++) {
        if (err[i].status == NGX_HTTP_INTERNAL_SERVER_ERROR
            || err[i].status == NGX_HTTP_BAD_REQUEST)
        {
            ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                               "sf_oauth \"%V\": with proxy_intercept_errors "
                               "on and an error_page for %ui, a SOAP 500 or "
                               "a Bulk 1.0 400 that says the session is dead "
                               "goes to the error page and is not replayed; "
                               "REST 401s still are", &conf->name,
                               err[i].status);
            return;
        }
    }
}


/*
 * Salesforce holds a CometD /meta/connect up to 110 s before it answers:
 * a location for /cometd/ whose proxy_read_timeout is shorter ends every
 * long poll with a 504, and the client handshakes again and again.
 * nginx -t says so.  Known by the location's name: a location that is not
 * named for /cometd/ and carries it too needs the same.
 */

static void
ngx_http_sf_oauth_check_cometd(ngx_conf_t *cf,
    ngx_http_sf_oauth_loc_conf_t *conf, ngx_http_core_loc_conf_t *clcf)
{
    ngx_http_upstream_conf_t  *ucf;

    /* ngx_http_proxy_loc_conf_t starts with its ngx_http_upstream_conf_t */
    ucf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_proxy_module);

    if (ucf == NULL
        || ucf->read_timeout >= NGX_HTTP_SF_OAUTH_COMETD_TIMEOUT
        || ngx_strlcasestrn(clcf->name.data, clcf->name.data + clcf->name.len,
                            (u_char *) "/cometd", sizeof("/cometd") - 1 - 1)
           == NULL)
    {
        return;
    }

    ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                  "sf_oauth \"%V\" in %s:%ui: location \"%V\" proxies the "
                  "Streaming API (CometD), whose /meta/connect Salesforce "
                  "holds up to 110 s, with proxy_read_timeout %M ms: every "
                  "long poll would end in a 504; set \"proxy_read_timeout "
                  "%Ms;\" in it", &conf->name, conf->file, conf->line,
                  &clcf->name, ucf->read_timeout,
                  (ngx_msec_t) NGX_HTTP_SF_OAUTH_COMETD_TIMEOUT / 1000);
}


static char *
ngx_http_sf_oauth_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_sf_oauth_loc_conf_t *prev = parent;
    ngx_http_sf_oauth_loc_conf_t *conf = child;

    ngx_uint_t                      i;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_core_loc_conf_t       *clcf;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    if (conf->cred == NGX_CONF_UNSET_PTR) {
        conf->cred = prev->cred;
        conf->value = prev->value;
        conf->name = prev->name;
        conf->file = prev->file;
        conf->line = prev->line;
    }

    if (conf->cred == NGX_CONF_UNSET_PTR) {
        conf->cred = NULL;
    }

    ngx_conf_merge_value(conf->soap_login, prev->soap_login, 0);
    ngx_conf_merge_off_value(conf->inflate_max, prev->inflate_max,
                             NGX_HTTP_SF_OAUTH_INFLATE_MAX);
    ngx_conf_merge_uint_value(conf->inflate_ratio, prev->inflate_ratio,
                              NGX_HTTP_SF_OAUTH_INFLATE_RATIO);

    if (conf->cred == NULL && conf->name.len && conf->value == NULL) {
        conf->cred = ngx_http_sf_oauth_find_credential(cf, conf);
        if (conf->cred == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (conf->soap_login && conf->cred) {
        /* its refreshes read the identity service for login() answers */
        conf->cred->soap_login = 1;
    }

    if (conf->soap_login && conf->value) {
        /* any credential may answer a login() here */
        smcf = ngx_http_conf_get_module_main_conf(cf,
                                                  ngx_http_sf_oauth_module);
        cred = smcf->creds.elts;

        for (i = 0; i < smcf->creds.nelts; i++) {
            cred[i]->soap_login = 1;
        }
    }

    /*
     * A location that has a content handler of its own (proxy_pass and
     * the like) runs this module's instead, which wraps it: so does
     * every request that nginx runs in it, subrequests and clones too.
     * The handler is final by now: merging follows parsing, and the
     * proxy module, merged earlier, has set those of "if" and
     * "limit_except" blocks.
     */

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if ((conf->cred || conf->value)
        && clcf->handler
        && clcf->handler != ngx_http_sf_oauth_handler_content
        && clcf->handler != ngx_http_sf_oauth_status_handler
        && clcf->handler != ngx_http_sf_oauth_console_handler)
    {
        conf->handler = clcf->handler;
        clcf->handler = ngx_http_sf_oauth_handler_content;

        ngx_http_sf_oauth_check_intercept(cf, conf, clcf);

        if (ngx_http_sf_oauth_grpc_conf(cf, conf, clcf) != NGX_CONF_OK) {
            return NGX_CONF_ERROR;
        }

        ngx_http_sf_oauth_check_cometd(cf, conf, clcf);
    }

    return NGX_CONF_OK;
}


static ngx_http_sf_oauth_cred_t *
ngx_http_sf_oauth_find_credential(ngx_conf_t *cf,
    ngx_http_sf_oauth_loc_conf_t *conf)
{
    ngx_uint_t                      i;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    smcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_sf_oauth_module);

    cred = smcf->creds.elts;

    for (i = 0; i < smcf->creds.nelts; i++) {
        if (cred[i]->name.len == conf->name.len
            && ngx_strncmp(cred[i]->name.data, conf->name.data,
                           conf->name.len) == 0)
        {
            return cred[i];
        }
    }

    ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                  "unknown sf_oauth_credential \"%V\" in \"sf_oauth\" "
                  "in %s:%ui", &conf->name, conf->file, conf->line);

    return NULL;
}


static ngx_int_t
ngx_http_sf_oauth_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_sf_oauth_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_sf_oauth_init(ngx_conf_t *cf)
{
    ngx_uint_t                      i;
    ngx_array_t                    *a;
    ngx_http_handler_pt            *h;
    ngx_http_core_main_conf_t      *cmcf;
    ngx_http_sf_oauth_redis_t     **rd;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    /* after an internal redirect, before the next location sees anything */
    h = ngx_array_push(&cmcf->phases[NGX_HTTP_REWRITE_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_sf_oauth_handler_rewrite;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_sf_oauth_handler;

    smcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_sf_oauth_module);

    /* http's resolver is known now: for the host names of the fleet */

    rd = smcf->redis.elts;

    for (i = 0; i < smcf->redis.nelts; i++) {
        if (ngx_http_sf_oauth_redis_conf_resolver(cf, rd[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    /* the console's flow: its secrets masked in every server's error log */
    if (smcf->connect_zone
        && ngx_http_sf_oauth_redact_flow_init(cf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    /*
     * Log handlers run in the order of the array, and the access log's
     * came first: ours goes in front of it, so that a token still in the
     * header (an upstream request that was never built) is out before
     * anything logs.
     */

    a = &cmcf->phases[NGX_HTTP_LOG_PHASE].handlers;

    h = ngx_array_push(a);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h = a->elts;
    ngx_memmove(&h[1], &h[0], (a->nelts - 1) * sizeof(ngx_http_handler_pt));
    h[0] = ngx_http_sf_oauth_handler_log;

    if (ngx_http_sf_oauth_handler_request_body_init(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_sf_oauth_filter_init(cf);
}


/*
 * At start and on reload, in the master, once the new configuration is
 * committed: the records of the zones (carried over from zones that
 * change, dropped for removed credentials), the state directories, and
 * warnings for the error log.
 */

static ngx_int_t
ngx_http_sf_oauth_init_module(ngx_cycle_t *cycle)
{
    ngx_uint_t                      i;
    ngx_shm_zone_t                **zone;
    ngx_core_conf_t                *ccf;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_sf_oauth_module);
    if (smcf == NULL) {
        return NGX_OK;
    }

    ngx_http_sf_oauth_zone_commit(cycle, &smcf->zones);

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    zone = smcf->zones.elts;

    for (i = 0; i < smcf->zones.nelts; i++) {
        ngx_http_sf_oauth_state_report(cycle, zone[i]->data);

        if (ngx_http_sf_oauth_state_init_dir(cycle, zone[i]->data)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    cred = smcf->creds.elts;

    for (i = 0; i < smcf->creds.nelts; i++) {
        if (!cred[i]->ssl_verify) {
            ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                          "sf_oauth: credential \"%V\": ssl_verify is off, "
                          "the token endpoint's certificate is not checked",
                          &cred[i]->name);
        }

        /*
         * A reload's or a quit's old worker closes every connection at
         * worker_shutdown_timeout, but a token request in flight is given
         * its credential's timeout (a refresh token rotated in it must
         * not be lost): the worker can outlive worker_shutdown_timeout
         */

        if (ccf->shutdown_timeout
            && ccf->shutdown_timeout < cred[i]->timeout)
        {
            ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                          "sf_oauth: credential \"%V\": "
                          "worker_shutdown_timeout %Mms is shorter than its "
                          "timeout %Mms: an old worker that runs a token "
                          "request for it then lets the request end, up to "
                          "%Mms, so that a rotated refresh token is not "
                          "lost; set worker_shutdown_timeout to %Mms or "
                          "more to bound old workers by it alone",
                          &cred[i]->name, ccf->shutdown_timeout,
                          cred[i]->timeout, cred[i]->timeout,
                          cred[i]->timeout);
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_sf_oauth_init_process(ngx_cycle_t *cycle)
{
    ngx_http_sf_oauth_main_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_sf_oauth_module);

    if (smcf == NULL || smcf->creds.nelts == 0) {
        return NGX_OK;
    }

    if (ngx_http_sf_oauth_client_init(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_http_sf_oauth_envelope_init();

    if (ngx_http_sf_oauth_fleet_init(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_sf_oauth_metrics_init(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_sf_oauth_ahead_init(cycle);
}


static void
ngx_http_sf_oauth_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_sf_oauth_main_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_sf_oauth_module);

    if (smcf == NULL || smcf->creds.nelts == 0) {
        return;
    }

    ngx_http_sf_oauth_metrics_exit(cycle);

    /* an abandoned refresh gives its fleet lease back first */
    ngx_http_sf_oauth_client_exit(cycle);
    ngx_http_sf_oauth_fleet_exit(cycle);

    ngx_http_sf_oauth_envelope_exit();
}


static ngx_int_t
ngx_http_sf_oauth_token_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_sf_oauth_ctx_t  *ctx;

    /* only a request of an sf_oauth location: not a mirror's, say */

    ctx = ngx_http_get_module_ctx(r, ngx_http_sf_oauth_module);

    if (ctx == NULL || ctx->authorization.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = ctx->authorization.len - (sizeof("Bearer ") - 1);
    v->data = ctx->authorization.data + sizeof("Bearer ") - 1;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_sf_oauth_instance_url_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                  url;
    ngx_http_sf_oauth_cred_t  *cred;

    if (ngx_http_sf_oauth_handler_cred(r, &cred, 0) != NGX_OK
        || cred == NULL || cred->rt.node == NULL
        || ngx_http_sf_oauth_store_instance_url(cred, r->pool, &url)
           != NGX_OK
        || url.len == 0)
    {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = url.len;
    v->data = url.data;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_sf_oauth_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_sf_oauth_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_sf_oauth_module);

    if (ctx == NULL || ctx->status == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = ngx_http_sf_oauth_statuses[ctx->status].len;
    v->data = ngx_http_sf_oauth_statuses[ctx->status].data;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}
