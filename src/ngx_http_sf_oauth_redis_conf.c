
/*
 * The sf_oauth_redis block, read when the configuration is loaded: its
 * parameters (through the dispatcher of ngx_http_sf_oauth_block.c), the
 * server's or the sentinels' addresses, and the TLS context.  A host name
 * is resolved here, with the system's resolver, only when http has no
 * "resolver": it is then frozen, and nginx -t says so; with one, workers
 * resolve it again before each connection (ngx_http_sf_oauth_primary.c).
 * The client that uses them is ngx_http_sf_oauth_redis.c.
 */


#include "ngx_http_sf_oauth.h"


/* the sf_oauth_redis block */

static char *ngx_http_sf_oauth_redis_sentinel(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_sf_oauth_redis_host(ngx_conf_t *cf,
    ngx_http_sf_oauth_redis_t *rd, ngx_str_t *text, in_port_t port,
    ngx_http_sf_oauth_redis_host_t *h);
static ngx_int_t ngx_http_sf_oauth_redis_freeze(ngx_conf_t *cf,
    ngx_http_sf_oauth_redis_t *rd, ngx_http_sf_oauth_redis_host_t *h,
    const char *what);
#if (NGX_SSL)
static char *ngx_http_sf_oauth_redis_tls(ngx_conf_t *cf,
    ngx_http_sf_oauth_redis_t *rd);
#endif


static ngx_conf_enum_t  ngx_http_sf_oauth_redis_downs[] = {
    { ngx_string("local"), NGX_HTTP_SF_OAUTH_DOWN_LOCAL },
    { ngx_string("fail"), NGX_HTTP_SF_OAUTH_DOWN_FAIL },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_sf_oauth_redis_commands[] = {

    { ngx_string("server"), NGX_CONF_TAKE1, ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_redis_t, server), NULL },

    { ngx_string("sentinel"), NGX_CONF_1MORE,
      ngx_http_sf_oauth_redis_sentinel, 0, 0, NULL },

    { ngx_string("sentinel_master"), NGX_CONF_TAKE1, ngx_conf_set_str_slot,
      0, offsetof(ngx_http_sf_oauth_redis_t, sentinel_master), NULL },

    { ngx_string("sentinel_password"), NGX_CONF_TAKE1,
      ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_redis_t, sentinel_password), NULL },

    { ngx_string("sentinel_password_file"), NGX_CONF_TAKE1,
      ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_redis_t, sentinel_password_file), NULL },

    { ngx_string("user"), NGX_CONF_TAKE1, ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_redis_t, user), NULL },

    { ngx_string("password"), NGX_CONF_TAKE1, ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_redis_t, password), NULL },

    { ngx_string("password_file"), NGX_CONF_TAKE1, ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_redis_t, password_file), NULL },

    { ngx_string("database"), NGX_CONF_TAKE1, ngx_conf_set_num_slot, 0,
      offsetof(ngx_http_sf_oauth_redis_t, database), NULL },

    { ngx_string("prefix"), NGX_CONF_TAKE1, ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_redis_t, prefix), NULL },

    { ngx_string("tls"), NGX_CONF_FLAG, ngx_conf_set_flag_slot, 0,
      offsetof(ngx_http_sf_oauth_redis_t, tls), NULL },

    { ngx_string("ca_file"), NGX_CONF_TAKE1, ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_redis_t, ca_file), NULL },

    { ngx_string("ssl_verify"), NGX_CONF_FLAG, ngx_conf_set_flag_slot, 0,
      offsetof(ngx_http_sf_oauth_redis_t, ssl_verify), NULL },

    { ngx_string("timeout"), NGX_CONF_TAKE1, ngx_conf_set_msec_slot, 0,
      offsetof(ngx_http_sf_oauth_redis_t, timeout), NULL },

    { ngx_string("redis_down"), NGX_CONF_TAKE1, ngx_conf_set_enum_slot, 0,
      offsetof(ngx_http_sf_oauth_redis_t, down),
      ngx_http_sf_oauth_redis_downs },

    { ngx_string("failover_wait"), NGX_CONF_TAKE1, ngx_conf_set_msec_slot, 0,
      offsetof(ngx_http_sf_oauth_redis_t, failover_wait), NULL },

    { ngx_string("allow_world_readable"), NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, 0,
      offsetof(ngx_http_sf_oauth_redis_t, world_readable), NULL },

      ngx_null_command
};


char *
ngx_http_sf_oauth_redis_conf_block(ngx_conf_t *cf,
    ngx_http_sf_oauth_redis_t *rd)
{
    char                       *rv;
    u_char                     *p;
    ngx_http_sf_oauth_owner_t   owner;

    rd->database = NGX_CONF_UNSET;
    rd->tls = NGX_CONF_UNSET;
    rd->ssl_verify = NGX_CONF_UNSET;
    rd->world_readable = NGX_CONF_UNSET;
    rd->timeout = NGX_CONF_UNSET_MSEC;
    rd->down = NGX_CONF_UNSET_UINT;
    rd->failover_wait = NGX_CONF_UNSET_MSEC;

    rv = ngx_http_sf_oauth_block_parse(cf, "sf_oauth_redis", &rd->name,
                                       ngx_http_sf_oauth_redis_commands, rd);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    ngx_conf_init_value(rd->database, 0);
    ngx_conf_init_value(rd->tls, 0);
    ngx_conf_init_value(rd->ssl_verify, 1);
    ngx_conf_init_value(rd->world_readable, 0);
    ngx_conf_init_msec_value(rd->timeout, 1000);
    ngx_conf_init_uint_value(rd->down, NGX_HTTP_SF_OAUTH_DOWN_LOCAL);
    ngx_conf_init_msec_value(rd->failover_wait, 10000);

    if (rd->prefix.data == NULL) {
        ngx_str_set(&rd->prefix, "sf_oauth:");
    }

    if (rd->server.len && rd->sentinels) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "sf_oauth_redis \"%V\" in %s:%ui has both "
                           "\"server\" and \"sentinel\": use one, "
                           "\"sentinel\" to ask the sentinels where the "
                           "primary is", &rd->name, rd->file, rd->line);
        return NGX_CONF_ERROR;
    }

    if (rd->server.len == 0 && rd->sentinels == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "sf_oauth_redis \"%V\" in %s:%ui has no "
                           "\"server\" and no \"sentinel\"",
                           &rd->name, rd->file, rd->line);
        return NGX_CONF_ERROR;
    }

    if (rd->sentinels && rd->sentinel_master.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "sf_oauth_redis \"%V\" in %s:%ui has "
                           "\"sentinel\" but no \"sentinel_master\": name "
                           "the master the sentinels monitor",
                           &rd->name, rd->file, rd->line);
        return NGX_CONF_ERROR;
    }

    if (rd->sentinels == NULL
        && (rd->sentinel_master.len || rd->sentinel_password.len
            || rd->sentinel_password_file.len))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "sf_oauth_redis \"%V\" in %s:%ui has "
                           "\"sentinel_master\" or \"sentinel_password\" "
                           "without \"sentinel\"",
                           &rd->name, rd->file, rd->line);
        return NGX_CONF_ERROR;
    }

    if (rd->timeout == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"timeout\" of sf_oauth_redis \"%V\" must be "
                           "more than 0", &rd->name);
        return NGX_CONF_ERROR;
    }

    owner.kind = "sf_oauth_redis";
    owner.name = &rd->name;
    owner.world_readable = rd->world_readable;

    rv = ngx_http_sf_oauth_block_secret(cf, &owner, "password",
                                        "password_file", &rd->password,
                                        &rd->password_file);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    rv = ngx_http_sf_oauth_block_secret(cf, &owner, "sentinel_password",
                                        "sentinel_password_file",
                                        &rd->sentinel_password,
                                        &rd->sentinel_password_file);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (rd->user.len && rd->password.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "sf_oauth_redis \"%V\" has a \"user\" but no "
                           "\"password\"", &rd->name);
        return NGX_CONF_ERROR;
    }

    rd->channel.len = rd->prefix.len + sizeof("events") - 1;
    rd->channel.data = ngx_pnalloc(cf->pool, rd->channel.len);
    if (rd->channel.data == NULL) {
        return NGX_CONF_ERROR;
    }

    p = ngx_cpymem(rd->channel.data, rd->prefix.data, rd->prefix.len);
    ngx_memcpy(p, "events", sizeof("events") - 1);

    if (rd->server.len) {
        rv = ngx_http_sf_oauth_redis_host(cf, rd, &rd->server, 6379,
                                          &rd->primary);
        if (rv != NGX_CONF_OK) {
            return rv;
        }

    } else {
        /* what the log calls the server: "mymaster (sentinels)" */

        rd->server.len = rd->sentinel_master.len + sizeof(" (sentinels)") - 1;
        rd->server.data = ngx_pnalloc(cf->pool, rd->server.len);
        if (rd->server.data == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_sprintf(rd->server.data, "%V (sentinels)", &rd->sentinel_master);
    }

    if (!rd->tls) {
        if (rd->ca_file.len) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "sf_oauth_redis \"%V\" has \"ca_file\" "
                               "without \"tls on\"", &rd->name);
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

#if (NGX_SSL)
    return ngx_http_sf_oauth_redis_tls(cf, rd);
#else
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "sf_oauth_redis \"%V\": \"tls on\" needs nginx built "
                       "with OpenSSL", &rd->name);
    return NGX_CONF_ERROR;
#endif
}


/* "sentinel HOST:PORT ...": each host as "server"'s, port 26379 */

static char *
ngx_http_sf_oauth_redis_sentinel(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_sf_oauth_redis_t *rd = conf;

    char                            *rv;
    ngx_str_t                       *value;
    ngx_uint_t                       i;
    ngx_http_sf_oauth_redis_host_t  *h;

    if (rd->sentinels) {
        return "is duplicate: list every sentinel in one \"sentinel\"";
    }

    rd->sentinels = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                     sizeof(ngx_http_sf_oauth_redis_host_t));
    if (rd->sentinels == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        h = ngx_array_push(rd->sentinels);
        if (h == NULL) {
            return NGX_CONF_ERROR;
        }

        rv = ngx_http_sf_oauth_redis_host(cf, rd, &value[i], 26379, h);
        if (rv != NGX_CONF_OK) {
            return rv;
        }

        if (h->addr.sockaddr && h->addr.sockaddr->sa_family == AF_UNIX) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "sentinel \"%V\" of sf_oauth_redis \"%V\": "
                               "use HOST:PORT", &value[i], &rd->name);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/*
 * A server's or a sentinel's address: "unix:PATH", an IP literal, or a
 * host name, which is resolved later: at run time with http's resolver,
 * or by ngx_http_sf_oauth_redis_conf_resolver() without one.
 */

static char *
ngx_http_sf_oauth_redis_host(ngx_conf_t *cf, ngx_http_sf_oauth_redis_t *rd,
    ngx_str_t *text, in_port_t port, ngx_http_sf_oauth_redis_host_t *h)
{
    ngx_url_t  u;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *text;
    u.default_port = port;
    u.no_resolve = 1;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid address \"%V\" in sf_oauth_redis \"%V\": "
                           "%s", text, &rd->name,
                           u.err ? u.err : "host not found");
        return NGX_CONF_ERROR;
    }

    h->text = *text;
    h->port = u.port;

    h->host.len = u.host.len;
    h->host.data = ngx_pnalloc(cf->pool, u.host.len + 1);
    if (h->host.data == NULL) {
        return NGX_CONF_ERROR;
    }

    *ngx_cpymem(h->host.data, u.host.data, u.host.len) = '\0';

    if (u.naddrs) {
        /* unix:PATH, or an IP literal */
        h->addr = u.addrs[0];
        h->is_ip = 1;
        h->resolved = 1;
    }

    return NGX_CONF_OK;
}


/*
 * When the configuration is loaded, after http's "resolver" is known:
 * with one, host names are resolved again in the workers before every
 * connection; without one, they are resolved now, once, and nginx -t
 * warns that they are frozen.
 */

ngx_int_t
ngx_http_sf_oauth_redis_conf_resolver(ngx_conf_t *cf,
    ngx_http_sf_oauth_redis_t *rd)
{
    ngx_uint_t                       i;
    ngx_http_core_loc_conf_t        *clcf;
    ngx_http_sf_oauth_redis_host_t  *h;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->resolver && clcf->resolver->connections.nelts) {
        rd->resolver = clcf->resolver;
        rd->resolver_timeout = clcf->resolver_timeout;

        if (rd->resolver_timeout == NGX_CONF_UNSET_MSEC
            || rd->resolver_timeout == 0)
        {
            rd->resolver_timeout = 30000;
        }

        return NGX_OK;
    }

    if (rd->sentinels == NULL) {
        return ngx_http_sf_oauth_redis_freeze(cf, rd, &rd->primary,
                                              "server");
    }

    h = rd->sentinels->elts;

    for (i = 0; i < rd->sentinels->nelts; i++) {
        if (ngx_http_sf_oauth_redis_freeze(cf, rd, &h[i], "sentinel")
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_sf_oauth_redis_freeze(ngx_conf_t *cf, ngx_http_sf_oauth_redis_t *rd,
    ngx_http_sf_oauth_redis_host_t *h, const char *what)
{
    ngx_url_t  u;

    if (h->resolved) {
        return NGX_OK;
    }

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = h->text;
    u.default_port = h->port;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "invalid %s \"%V\" in sf_oauth_redis \"%V\" in "
                      "%s:%ui: %s", what, &h->text, &rd->name, rd->file,
                      rd->line, u.err ? u.err : "host not found");
        return NGX_ERROR;
    }

    if (u.naddrs > 1) {
        ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                      "%s \"%V\" of sf_oauth_redis \"%V\" has %ui "
                      "addresses: the first, \"%V\", is used", what,
                      &h->text, &rd->name, u.naddrs, &u.addrs[0].name);
    }

    ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                  "the host name in %s \"%V\" of sf_oauth_redis \"%V\" in "
                  "%s:%ui is resolved once, now, to \"%V\", and frozen: a "
                  "failover that moves the name is not followed; add "
                  "\"resolver\" to http to resolve it again before each "
                  "connection", what, &h->text, &rd->name, rd->file,
                  rd->line, &u.addrs[0].name);

    h->addr = u.addrs[0];
    h->resolved = 1;

    return NGX_OK;
}


#if (NGX_SSL)

static char *
ngx_http_sf_oauth_redis_tls(ngx_conf_t *cf, ngx_http_sf_oauth_redis_t *rd)
{
    ngx_pool_cleanup_t  *cln;

    rd->ssl = ngx_pcalloc(cf->pool, sizeof(ngx_ssl_t));
    if (rd->ssl == NULL) {
        return NGX_CONF_ERROR;
    }

    rd->ssl->log = cf->log;

    if (ngx_ssl_create(rd->ssl, NGX_SSL_TLSv1_2|NGX_SSL_TLSv1_3, NULL)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        ngx_ssl_cleanup_ctx(rd->ssl);
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = rd->ssl;

    if (!rd->ssl_verify) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "sf_oauth_redis \"%V\" has \"ssl_verify off\": "
                           "Redis's certificate is not checked",
                           &rd->name);
        return NGX_CONF_OK;
    }

    if (rd->ca_file.len) {
        if (ngx_ssl_trusted_certificate(cf, rd->ssl, &rd->ca_file, 4)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }

    } else if (SSL_CTX_set_default_verify_paths(rd->ssl->ctx) != 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "sf_oauth_redis \"%V\": the system's CA "
                           "certificates cannot be loaded: set \"ca_file\"",
                           &rd->name);
        return NGX_CONF_ERROR;
    }

    SSL_CTX_set_verify(rd->ssl->ctx, SSL_VERIFY_NONE, NULL);

    return NGX_CONF_OK;
}

#endif
