
/*
 * The sf_oauth_credential block: its parameters, where its secrets come
 * from (inline, a file, an environment variable), and the fingerprint of
 * what makes a token.
 *
 * The parameters are an ngx_command_t table run by the blocks' dispatcher
 * (ngx_http_sf_oauth_block.c), so they parse like any nginx directive,
 * with nginx's own slot functions.
 */


#include "ngx_http_sf_oauth.h"

#include <openssl/evp.h>


static char *ngx_http_sf_oauth_set_url(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_sf_oauth_set_connect_url(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_sf_oauth_set_backoff(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_sf_oauth_set_grant(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_sf_oauth_grant_conf(ngx_conf_t *cf,
    ngx_http_sf_oauth_cred_t *cred);
static char *ngx_http_sf_oauth_jwt_conf(ngx_conf_t *cf,
    ngx_http_sf_oauth_cred_t *cred);
static ngx_int_t ngx_http_sf_oauth_host_is(ngx_str_t *host, const char *name,
    const char *suffix);
static char *ngx_http_sf_oauth_fingerprint_conf(ngx_conf_t *cf,
    ngx_http_sf_oauth_cred_t *cred);


static ngx_conf_enum_t  ngx_http_sf_oauth_grants[] = {
    { ngx_string("refresh_token"), NGX_HTTP_SF_OAUTH_GRANT_REFRESH },
    { ngx_string("jwt_bearer"), NGX_HTTP_SF_OAUTH_GRANT_JWT },
    { ngx_string("client_credentials"), NGX_HTTP_SF_OAUTH_GRANT_CLIENT },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_sf_oauth_credential_commands[] = {

    { ngx_string("grant"), NGX_CONF_TAKE1, ngx_http_sf_oauth_set_grant, 0,
      0, NULL },

    { ngx_string("username"), NGX_CONF_TAKE1, ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_cred_t, username), NULL },

    { ngx_string("private_key"), NGX_CONF_TAKE1, ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_cred_t, private_key), NULL },

    { ngx_string("audience"), NGX_CONF_TAKE1, ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_cred_t, audience), NULL },

    { ngx_string("zone"), NGX_CONF_TAKE1, ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_cred_t, zone_name), NULL },

    { ngx_string("token_url"), NGX_CONF_TAKE1, ngx_http_sf_oauth_set_url, 0,
      offsetof(ngx_http_sf_oauth_cred_t, token_url), NULL },

    { ngx_string("client_id"), NGX_CONF_TAKE1, ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_cred_t, client_id), NULL },

    { ngx_string("client_secret"), NGX_CONF_TAKE1, ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_cred_t, client_secret), NULL },

    { ngx_string("client_secret_file"), NGX_CONF_TAKE1,
      ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_cred_t, client_secret_file), NULL },

    { ngx_string("refresh_token"), NGX_CONF_TAKE1, ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_cred_t, refresh_token), NULL },

    { ngx_string("refresh_token_file"), NGX_CONF_TAKE1,
      ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_cred_t, refresh_token_file), NULL },

    { ngx_string("connect_url"), NGX_CONF_TAKE1,
      ngx_http_sf_oauth_set_connect_url, 0, 0, NULL },

    { ngx_string("timeout"), NGX_CONF_TAKE1, ngx_conf_set_msec_slot, 0,
      offsetof(ngx_http_sf_oauth_cred_t, timeout), NULL },

    { ngx_string("backoff"), NGX_CONF_TAKE2, ngx_http_sf_oauth_set_backoff, 0,
      0, NULL },

    { ngx_string("hold"), NGX_CONF_TAKE1, ngx_conf_set_msec_slot, 0,
      offsetof(ngx_http_sf_oauth_cred_t, hold), NULL },

    { ngx_string("lifetime"), NGX_CONF_TAKE1, ngx_conf_set_msec_slot, 0,
      offsetof(ngx_http_sf_oauth_cred_t, lifetime), NULL },

    { ngx_string("refresh_ahead"), NGX_CONF_TAKE1, ngx_conf_set_msec_slot, 0,
      offsetof(ngx_http_sf_oauth_cred_t, refresh_ahead), NULL },

    { ngx_string("introspect"), NGX_CONF_FLAG, ngx_conf_set_flag_slot, 0,
      offsetof(ngx_http_sf_oauth_cred_t, introspect), NULL },

    { ngx_string("ca_file"), NGX_CONF_TAKE1, ngx_conf_set_str_slot, 0,
      offsetof(ngx_http_sf_oauth_cred_t, ca_file), NULL },

    { ngx_string("ssl_verify"), NGX_CONF_FLAG, ngx_conf_set_flag_slot, 0,
      offsetof(ngx_http_sf_oauth_cred_t, ssl_verify), NULL },

    { ngx_string("allow_world_readable"), NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, 0,
      offsetof(ngx_http_sf_oauth_cred_t, world_readable), NULL },

      ngx_null_command
};


/* parses the block of a new credential and checks it whole */

char *
ngx_http_sf_oauth_credential_block(ngx_conf_t *cf,
    ngx_http_sf_oauth_cred_t *cred)
{
    char                       *rv;
    const char                 *missing;
    ngx_http_sf_oauth_owner_t   owner;

    cred->grant = NGX_CONF_UNSET_UINT;
    cred->timeout = NGX_CONF_UNSET_MSEC;
    cred->backoff_min = NGX_CONF_UNSET_MSEC;
    cred->backoff_max = NGX_CONF_UNSET_MSEC;
    cred->hold = NGX_CONF_UNSET_MSEC;
    cred->lifetime = NGX_CONF_UNSET_MSEC;
    cred->refresh_ahead = NGX_CONF_UNSET_MSEC;
    cred->introspect = NGX_CONF_UNSET;
    cred->ssl_verify = NGX_CONF_UNSET;
    cred->world_readable = NGX_CONF_UNSET;

    rv = ngx_http_sf_oauth_block_parse(cf, "sf_oauth_credential",
                                       &cred->name,
                                       ngx_http_sf_oauth_credential_commands,
                                       cred);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    ngx_conf_init_uint_value(cred->grant, NGX_HTTP_SF_OAUTH_GRANT_REFRESH);
    ngx_conf_init_msec_value(cred->timeout, 10000);
    ngx_conf_init_msec_value(cred->backoff_min, 1000);
    ngx_conf_init_msec_value(cred->backoff_max, 60000);
    ngx_conf_init_msec_value(cred->hold, 300000);
    ngx_conf_init_msec_value(cred->lifetime, 0);
    ngx_conf_init_value(cred->introspect, 0);

    /* 5 minutes ahead, or a fifth of a shorter lifetime */
    ngx_conf_init_msec_value(cred->refresh_ahead,
                             cred->lifetime ? ngx_min(300000,
                                                      cred->lifetime / 5)
                                            : (cred->introspect ? 300000
                                                                : 0));
    ngx_conf_init_value(cred->ssl_verify, 1);
    ngx_conf_init_value(cred->world_readable, 0);

    /* the secrets, once the file permission rule is known */

    owner.kind = "sf_oauth_credential";
    owner.name = &cred->name;
    owner.world_readable = cred->world_readable;

    rv = ngx_http_sf_oauth_block_secret(cf, &owner, "client_secret",
                                        "client_secret_file",
                                        &cred->client_secret,
                                        &cred->client_secret_file);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    rv = ngx_http_sf_oauth_block_secret(cf, &owner, "refresh_token",
                                        "refresh_token_file",
                                        &cred->refresh_token,
                                        &cred->refresh_token_file);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    missing = NULL;

    if (cred->zone_name.len == 0) {
        missing = "zone";

    } else if (cred->token_url.len == 0) {
        missing = "token_url";

    } else if (cred->client_id.len == 0) {
        missing = "client_id";
    }

    if (missing) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "sf_oauth_credential \"%V\" has no \"%s\"",
                           &cred->name, missing);
        return NGX_CONF_ERROR;
    }

    rv = ngx_http_sf_oauth_grant_conf(cf, cred);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (cred->grant == NGX_HTTP_SF_OAUTH_GRANT_REFRESH
        && cred->refresh_token.len == 0)
    {
        /*
         * Not connected: the console's web server flow gets its refresh
         * token (init_main_conf checks that there is a console)
         */

        cred->not_connected.data = ngx_pnalloc(cf->pool,
                                       sizeof("credential \"\" is not "
                                              "connected: connect it from "
                                              "the sf_oauth_console page")
                                       + cred->name.len);
        if (cred->not_connected.data == NULL) {
            return NGX_CONF_ERROR;
        }

        cred->not_connected.len = ngx_sprintf(cred->not_connected.data,
                                              "credential \"%V\" is not "
                                              "connected: connect it from "
                                              "the sf_oauth_console page",
                                              &cred->name)
                                  - cred->not_connected.data;
    }

    if (cred->refresh_token.len > NGX_HTTP_SF_OAUTH_REFRESH_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the refresh token of sf_oauth_credential \"%V\" "
                           "is longer than %d bytes", &cred->name,
                           NGX_HTTP_SF_OAUTH_REFRESH_MAX);
        return NGX_CONF_ERROR;
    }

    if (cred->timeout == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"timeout\" of sf_oauth_credential \"%V\" must "
                           "be more than 0", &cred->name);
        return NGX_CONF_ERROR;
    }

    if (cred->lifetime && cred->refresh_ahead >= cred->lifetime) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"refresh_ahead\" of sf_oauth_credential \"%V\" "
                           "must be shorter than its \"lifetime\"",
                           &cred->name);
        return NGX_CONF_ERROR;
    }

    if (cred->lifetime == 0 && !cred->introspect && cred->refresh_ahead != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"refresh_ahead\" of sf_oauth_credential \"%V\" "
                           "needs a \"lifetime\": the org's session timeout, "
                           "or \"introspect on\"", &cred->name);
        return NGX_CONF_ERROR;
    }

    if (cred->introspect) {
        if (cred->grant == NGX_HTTP_SF_OAUTH_GRANT_JWT) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"introspect on\" of sf_oauth_credential "
                               "\"%V\" needs the client secret, which "
                               "\"grant jwt_bearer\" has not: use "
                               "\"lifetime\" for its refresh ahead of "
                               "expiry", &cred->name);
            return NGX_CONF_ERROR;
        }

        if (cred->token_url.len < sizeof("/token") - 1
            || ngx_strncmp(cred->token_url.data + cred->token_url.len
                           - (sizeof("/token") - 1), "/token",
                           sizeof("/token") - 1) != 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"introspect on\" of sf_oauth_credential "
                               "\"%V\" needs a token_url ending in "
                               "\"/token\": the introspection endpoint is "
                               "next to it", &cred->name);
            return NGX_CONF_ERROR;
        }

        cred->introspect_url.len = cred->token_url.len
                                   - (sizeof("token") - 1)
                                   + sizeof("introspect") - 1;
        cred->introspect_url.data = ngx_pnalloc(cf->pool,
                                                cred->introspect_url.len + 1);
        if (cred->introspect_url.data == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_sprintf(cred->introspect_url.data, "%*s%s%Z",
                    cred->token_url.len - (sizeof("token") - 1),
                    cred->token_url.data, "introspect");
    }

    if (cred->ca_file.len) {
        if (ngx_conf_full_name(cf->cycle, &cred->ca_file, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        if (access((char *) cred->ca_file.data, R_OK) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               "cannot read ca_file \"%V\" of "
                               "sf_oauth_credential \"%V\"",
                               &cred->ca_file, &cred->name);
            return NGX_CONF_ERROR;
        }
    }

    if (!cred->ssl_verify) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "sf_oauth_credential \"%V\" has \"ssl_verify "
                           "off\": the token endpoint's certificate is not "
                           "checked, and anyone on the path can take the "
                           "refresh token", &cred->name);
    }

    /* a zone declared later in the file is resolved in init_main_conf */
    cred->shm_zone = ngx_shared_memory_add(cf, &cred->zone_name, 0,
                                           &ngx_http_sf_oauth_module);
    if (cred->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    return ngx_http_sf_oauth_fingerprint_conf(cf, cred);
}


static char *
ngx_http_sf_oauth_set_url(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_sf_oauth_cred_t  *cred = conf;

    ngx_int_t                 rc;
    ngx_str_t                *url;
    ngx_http_sf_oauth_url_t   u;

    if (cred->token_url.data) {
        return "is duplicate";
    }

    url = &((ngx_str_t *) cf->args->elts)[1];

    rc = ngx_http_sf_oauth_url_parse(cf->pool, url, &u);

    if (rc == NGX_DECLINED) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid token_url \"%V\" in sf_oauth_credential "
                           "\"%V\": it must start with https:// or http://",
                           url, &cred->name);
        return NGX_CONF_ERROR;
    }

    if (rc != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid token_url \"%V\" in sf_oauth_credential "
                           "\"%V\": %s", url, &cred->name,
                           u.err ? u.err : "no host");
        return NGX_CONF_ERROR;
    }

    cred->token_url = *url;
    cred->token_host = u.host;

    /* the identity service's URLs start with it */
    cred->token_origin = u.origin;

    return NGX_CONF_OK;
}


/*
 * connect_url: the callback URL of the web server flow, exactly as
 * registered in the connected app or external client app.
 */

static char *
ngx_http_sf_oauth_set_connect_url(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_sf_oauth_cred_t  *cred = conf;

    ngx_int_t                 rc;
    ngx_str_t                *url;
    ngx_http_sf_oauth_url_t   u;

    if (cred->connect_url.data) {
        return "is duplicate";
    }

    url = &((ngx_str_t *) cf->args->elts)[1];

    rc = ngx_http_sf_oauth_url_parse(cf->pool, url, &u);

    if (rc == NGX_DECLINED) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid connect_url \"%V\" in "
                           "sf_oauth_credential \"%V\": it must start with "
                           "https:// or http://", url, &cred->name);
        return NGX_CONF_ERROR;
    }

    if (rc != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid connect_url \"%V\" in "
                           "sf_oauth_credential \"%V\": %s", url,
                           &cred->name, u.err ? u.err : "no host");
        return NGX_CONF_ERROR;
    }

    cred->connect_url = *url;

    return NGX_CONF_OK;
}


static char *
ngx_http_sf_oauth_set_grant(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_sf_oauth_cred_t  *cred = conf;

    ngx_str_t        *value;
    ngx_conf_enum_t  *e;

    if (cred->grant != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (e = ngx_http_sf_oauth_grants; e->name.len; e++) {
        if (e->name.len == value[1].len
            && ngx_strcmp(e->name.data, value[1].data) == 0)
        {
            cred->grant = e->value;
            return NGX_CONF_OK;
        }
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid \"grant %V\" in sf_oauth_credential \"%V\": "
                       "use refresh_token, jwt_bearer or client_credentials",
                       &value[1], &cred->name);

    return NGX_CONF_ERROR;
}


static char *
ngx_http_sf_oauth_set_backoff(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_sf_oauth_cred_t  *cred = conf;

    ngx_str_t  *value;

    if (cred->backoff_min != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    cred->backoff_min = ngx_parse_time(&value[1], 0);
    cred->backoff_max = ngx_parse_time(&value[2], 0);

    if (cred->backoff_min == (ngx_msec_t) NGX_ERROR
        || cred->backoff_max == (ngx_msec_t) NGX_ERROR
        || cred->backoff_min == 0
        || cred->backoff_max < cred->backoff_min)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"backoff %V %V\" in sf_oauth_credential "
                           "\"%V\": it takes the first and the longest delay, "
                           "such as \"backoff 1s 60s\"",
                           &value[1], &value[2], &cred->name);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * What each grant needs, and what it must not have: a parameter that the
 * grant would ignore is an error, so that nobody believes it is used.
 */

static char *
ngx_http_sf_oauth_grant_conf(ngx_conf_t *cf, ngx_http_sf_oauth_cred_t *cred)
{
    const char  *grant, *extra;

    extra = NULL;
    grant = (char *) ngx_http_sf_oauth_grants[cred->grant].name.data;

    if (cred->grant != NGX_HTTP_SF_OAUTH_GRANT_JWT) {
        if (cred->username.len) {
            extra = "username";

        } else if (cred->private_key.len) {
            extra = "private_key";

        } else if (cred->audience.len) {
            extra = "audience";
        }
    }

    if (cred->grant != NGX_HTTP_SF_OAUTH_GRANT_REFRESH
        && cred->refresh_token.len)
    {
        extra = cred->refresh_token_file.len ? "refresh_token_file"
                                             : "refresh_token";
    }

    if (cred->grant != NGX_HTTP_SF_OAUTH_GRANT_REFRESH
        && cred->connect_url.len)
    {
        extra = "connect_url";
    }

    if (cred->grant == NGX_HTTP_SF_OAUTH_GRANT_JWT
        && cred->client_secret.len)
    {
        extra = cred->client_secret_file.len ? "client_secret_file"
                                             : "client_secret";
    }

    if (extra) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "sf_oauth_credential \"%V\" has \"%s\", which "
                           "\"grant %s\" does not use: remove it",
                           &cred->name, extra, grant);
        return NGX_CONF_ERROR;
    }

    if (cred->grant == NGX_HTTP_SF_OAUTH_GRANT_JWT) {
        return ngx_http_sf_oauth_jwt_conf(cf, cred);
    }

    if (cred->grant != NGX_HTTP_SF_OAUTH_GRANT_CLIENT) {
        return NGX_CONF_OK;
    }

    if (cred->client_secret.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "sf_oauth_credential \"%V\" has no "
                           "\"client_secret\" or \"client_secret_file\": "
                           "\"grant client_credentials\" needs the connected "
                           "app's consumer secret", &cred->name);
        return NGX_CONF_ERROR;
    }

    if (ngx_http_sf_oauth_host_is(&cred->token_host, "login.salesforce.com",
                                  NULL)
        || ngx_http_sf_oauth_host_is(&cred->token_host, "test.salesforce.com",
                                     NULL))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "sf_oauth_credential \"%V\": Salesforce refuses "
                           "\"grant client_credentials\" at \"%V\"; set "
                           "token_url to the org's My Domain, such as "
                           "https://acme.my.salesforce.com/services/oauth2/"
                           "token", &cred->name, &cred->token_url);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * The JWT bearer grant: the username, the private key, and the audience,
 * by default from token_url's host: login.salesforce.com and My Domain
 * hosts take https://login.salesforce.com; test.salesforce.com and sandbox
 * My Domain hosts take https://test.salesforce.com; any other host is a
 * site, whose URL is token_url without "/services/oauth2/token".
 */

static char *
ngx_http_sf_oauth_jwt_conf(ngx_conf_t *cf, ngx_http_sf_oauth_cred_t *cred)
{
    char                       *rv;
    size_t                      suffix;
    ngx_str_t                   pem, *host;
    ngx_http_sf_oauth_owner_t   owner;

    if (cred->username.len == 0 || cred->private_key.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "sf_oauth_credential \"%V\" has no \"%s\": "
                           "\"grant jwt_bearer\" needs the integration "
                           "user's \"username\" and the connected app's "
                           "\"private_key\"", &cred->name,
                           cred->username.len ? "private_key" : "username");
        return NGX_CONF_ERROR;
    }

    if (cred->audience.len == 0) {

        host = &cred->token_host;
        suffix = sizeof("/services/oauth2/token") - 1;

        if (ngx_http_sf_oauth_host_is(host, "test.salesforce.com", NULL)
            || ngx_http_sf_oauth_host_is(host, NULL,
                                         ".sandbox.my.salesforce.com"))
        {
            ngx_str_set(&cred->audience, "https://test.salesforce.com");

        } else if (ngx_http_sf_oauth_host_is(host, "login.salesforce.com",
                                             NULL)
                   || ngx_http_sf_oauth_host_is(host, NULL,
                                                ".my.salesforce.com"))
        {
            ngx_str_set(&cred->audience, "https://login.salesforce.com");

        } else if (cred->token_url.len > suffix
                   && ngx_strncmp(cred->token_url.data + cred->token_url.len
                                  - suffix, "/services/oauth2/token",
                                  suffix)
                      == 0)
        {
            cred->audience.data = cred->token_url.data;
            cred->audience.len = cred->token_url.len - suffix;

        } else {
            cred->audience = cred->token_origin;
        }

    } else if (ngx_strncmp(cred->audience.data, "https://", 8) != 0
               && ngx_strncmp(cred->audience.data, "http://", 7) != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid audience \"%V\" in sf_oauth_credential "
                           "\"%V\": it is a URL, such as "
                           "https://login.salesforce.com",
                           &cred->audience, &cred->name);
        return NGX_CONF_ERROR;
    }

    owner.kind = "sf_oauth_credential";
    owner.name = &cred->name;
    owner.world_readable = cred->world_readable;

    rv = ngx_http_sf_oauth_block_read_secret(cf, &owner, "private_key",
                                             &cred->private_key, &pem);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    rv = ngx_http_sf_oauth_jwt_key(cf, cred, &pem);

    ngx_explicit_memzero(pem.data, pem.len);

    return rv;
}


/* whether a host is "name", or ends in "suffix", ignoring case */

static ngx_int_t
ngx_http_sf_oauth_host_is(ngx_str_t *host, const char *name,
    const char *suffix)
{
    size_t  n;

    if (name) {
        n = ngx_strlen(name);
        return host->len == n
               && ngx_strncasecmp(host->data, (u_char *) name, n) == 0;
    }

    n = ngx_strlen(suffix);

    return host->len > n
           && ngx_strncasecmp(host->data + host->len - n, (u_char *) suffix,
                              n)
              == 0;
}


/*
 * The fingerprints of a credential, SHA-256 cut to 64 bits, never shown.
 *
 * conf_fp, what makes a token: a change of any of these on reload drops
 * the cached token and restarts from the configured refresh token.  The
 * grant, the username and the audience count for the grants other than
 * the refresh token's, so that its fingerprints stay as they were before
 * these grants came (a state file written before still matches).
 *
 * rt_fp, for the refresh token grant only: conf_fp without the token_url.
 * A refresh token is the org's, taken at the login host and at the org's
 * My Domain alike, so a record whose conf_fp differs but whose rt_fp is
 * the credential's had only its token_url changed: it is kept, with the
 * refresh token rotated or connected into it, which may be the only one
 * Salesforce still takes (sending the configured one, rotated out, gets
 * every token of the app for the user revoked).  conf_fp itself stays as
 * it was, token_url included, rather than be computed anew without it:
 * state files and fleet records written by earlier versions carry it, an
 * upgrade must match them, and nodes of an earlier version in a fleet must
 * still match the records the newer ones write.  A record without rt_fp
 * (written earlier) is judged by conf_fp alone.
 *
 * secret_fp, what proves the app to Salesforce: the client secret, and the
 * private key (its public half).  They are left out of conf_fp on purpose:
 * a token got with an old secret or key stays valid at Salesforce, so
 * replacing one must not drop the token, nor the refresh token rotated
 * into the zone.  A change of secret_fp ends a backoff or hold instead
 * (ngx_http_sf_oauth_zone_commit): the fix of a wrong secret or key
 * takes effect at the reload.
 */

static char *
ngx_http_sf_oauth_fingerprint_conf(ngx_conf_t *cf,
    ngx_http_sf_oauth_cred_t *cred)
{
    u_char         md[EVP_MAX_MD_SIZE];
    unsigned int   n;
    ngx_str_t      der;
    EVP_MD_CTX    *md_ctx;

    if (cred->refresh_token.data == NULL) {
        /* the grants without a refresh token hash it as empty */
        ngx_str_set(&cred->refresh_token, "");
        cred->refresh_token.len = 0;
    }

    md_ctx = EVP_MD_CTX_new();
    if (md_ctx == NULL) {
        return NGX_CONF_ERROR;
    }

    if (EVP_DigestInit_ex(md_ctx, EVP_sha256(), NULL) != 1
        || EVP_DigestUpdate(md_ctx, cred->token_url.data,
                            cred->token_url.len + 1) != 1
        || EVP_DigestUpdate(md_ctx, cred->client_id.data,
                            cred->client_id.len + 1) != 1
        || EVP_DigestUpdate(md_ctx, cred->refresh_token.data,
                            cred->refresh_token.len + 1) != 1
        || (cred->grant != NGX_HTTP_SF_OAUTH_GRANT_REFRESH
            && (EVP_DigestUpdate(md_ctx, &cred->grant,
                                 sizeof(ngx_uint_t)) != 1
                || EVP_DigestUpdate(md_ctx, cred->username.data,
                                    cred->username.len) != 1
                || EVP_DigestUpdate(md_ctx, "", 1) != 1
                || EVP_DigestUpdate(md_ctx, cred->audience.data,
                                    cred->audience.len) != 1))
        || EVP_DigestFinal_ex(md_ctx, md, &n) != 1)
    {
        EVP_MD_CTX_free(md_ctx);
        return NGX_CONF_ERROR;
    }

    EVP_MD_CTX_free(md_ctx);

    ngx_memcpy(&cred->conf_fp, md, sizeof(uint64_t));

    cred->rt_fp = 0;

    if (cred->grant == NGX_HTTP_SF_OAUTH_GRANT_REFRESH) {
        md_ctx = EVP_MD_CTX_new();
        if (md_ctx == NULL) {
            return NGX_CONF_ERROR;
        }

        if (EVP_DigestInit_ex(md_ctx, EVP_sha256(), NULL) != 1
            || EVP_DigestUpdate(md_ctx, "rt_fp", sizeof("rt_fp")) != 1
            || EVP_DigestUpdate(md_ctx, cred->client_id.data,
                                cred->client_id.len + 1) != 1
            || EVP_DigestUpdate(md_ctx, cred->refresh_token.data,
                                cred->refresh_token.len + 1) != 1
            || EVP_DigestFinal_ex(md_ctx, md, &n) != 1)
        {
            EVP_MD_CTX_free(md_ctx);
            return NGX_CONF_ERROR;
        }

        EVP_MD_CTX_free(md_ctx);

        ngx_memcpy(&cred->rt_fp, md, sizeof(uint64_t));

        if (cred->rt_fp == 0) {
            cred->rt_fp = 1;
        }
    }

    ngx_str_null(&der);

    if (cred->pkey
        && ngx_http_sf_oauth_jwt_public(cred, cf->temp_pool, &der) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    md_ctx = EVP_MD_CTX_new();
    if (md_ctx == NULL) {
        return NGX_CONF_ERROR;
    }

    if (EVP_DigestInit_ex(md_ctx, EVP_sha256(), NULL) != 1
        || EVP_DigestUpdate(md_ctx, "sf_oauth secrets",
                            sizeof("sf_oauth secrets")) != 1
        || EVP_DigestUpdate(md_ctx, cred->client_secret.data,
                            cred->client_secret.len) != 1
        || EVP_DigestUpdate(md_ctx, "", 1) != 1
        || EVP_DigestUpdate(md_ctx, der.data, der.len) != 1
        || EVP_DigestFinal_ex(md_ctx, md, &n) != 1)
    {
        EVP_MD_CTX_free(md_ctx);
        return NGX_CONF_ERROR;
    }

    EVP_MD_CTX_free(md_ctx);

    ngx_memcpy(&cred->secret_fp, md, sizeof(uint64_t));
    ngx_explicit_memzero(md, sizeof(md));

    return NGX_CONF_OK;
}


/*
 * Two credentials with one refresh token and client_id are refused: with
 * refresh-token rotation, each refresh invalidates the refresh token that
 * the other holds, and its next refresh presents a dead one, which makes
 * Salesforce revoke them all.  token_url is left out: Salesforce takes a
 * refresh token at the login host and at the org's My Domain alike.  One
 * credential serves any number of locations and servers.  The message
 * names the credentials, never the token.
 */

ngx_int_t
ngx_http_sf_oauth_credential_unique(ngx_conf_t *cf,
    ngx_http_sf_oauth_main_conf_t *smcf)
{
    ngx_uint_t                  i, j;
    ngx_http_sf_oauth_cred_t  **cred, *a, *b;

    cred = smcf->creds.elts;

    for (i = 1; i < smcf->creds.nelts; i++) {
        b = cred[i];

        if (b->refresh_token.len == 0) {
            continue;
        }

        for (j = 0; j < i; j++) {
            a = cred[j];

            if (a->refresh_token.len != b->refresh_token.len
                || a->client_id.len != b->client_id.len
                || ngx_memcmp(a->refresh_token.data, b->refresh_token.data,
                              b->refresh_token.len) != 0
                || ngx_memcmp(a->client_id.data, b->client_id.data,
                              b->client_id.len) != 0)
            {
                continue;
            }

            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "sf_oauth_credential \"%V\" in %s:%ui has the "
                          "refresh token and client_id of "
                          "sf_oauth_credential \"%V\" in %s:%ui: with "
                          "refresh-token rotation each one's refresh "
                          "would revoke the other's tokens; keep one of "
                          "them: \"sf_oauth %V;\" serves any number of "
                          "locations and servers", &b->name, b->file,
                          b->line, &a->name, a->file, a->line, &a->name);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * The credentials by name, for "sf_oauth $variable": found per request
 * without a scan and without a lock.  nginx's hash keeps its keys in lower
 * case, but names are case-sensitive: the hash leads to the first
 * credential of a lower-case name, and the others of that name ("prod",
 * "PROD") follow it in a chain; a match is checked exactly.
 */

ngx_int_t
ngx_http_sf_oauth_credential_names(ngx_conf_t *cf,
    ngx_http_sf_oauth_main_conf_t *smcf)
{
    ngx_uint_t                  i, j;
    ngx_array_t                 keys;
    ngx_hash_key_t             *k;
    ngx_hash_init_t             hash;
    ngx_http_sf_oauth_cred_t  **cred, *c;

    if (ngx_array_init(&keys, cf->temp_pool, smcf->creds.nelts + 1,
                       sizeof(ngx_hash_key_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    cred = smcf->creds.elts;

    for (i = 0; i < smcf->creds.nelts; i++) {

        cred[i]->same_name = NULL;

        for (j = 0; j < i; j++) {
            if (cred[j]->name.len == cred[i]->name.len
                && ngx_strncasecmp(cred[j]->name.data, cred[i]->name.data,
                                   cred[i]->name.len)
                   == 0)
            {
                break;
            }
        }

        if (j < i) {
            /* the same name but for case: chained behind the first */

            for (c = cred[j]; c->same_name; c = c->same_name) {
                /* void */
            }

            c->same_name = cred[i];
            continue;
        }

        k = ngx_array_push(&keys);
        if (k == NULL) {
            return NGX_ERROR;
        }

        k->key = cred[i]->name;
        k->key_hash = ngx_hash_key_lc(cred[i]->name.data,
                                      cred[i]->name.len);
        k->value = cred[i];
    }

    /* a bucket holds at least two entries of the longest name */

    hash.hash = &smcf->names;
    hash.key = ngx_hash_key_lc;
    hash.max_size = 1024;
    hash.bucket_size = ngx_align(2 * (sizeof(void *) + sizeof(u_short)
                                      + NGX_HTTP_SF_OAUTH_NAME_MAX)
                                 + sizeof(void *),
                                 ngx_cacheline_size);
    hash.name = "sf_oauth_credential_names";
    hash.pool = cf->pool;
    hash.temp_pool = NULL;

    return ngx_hash_init(&hash, keys.elts, keys.nelts);
}


ngx_http_sf_oauth_cred_t *
ngx_http_sf_oauth_credential_find(ngx_http_sf_oauth_main_conf_t *smcf,
    ngx_str_t *name)
{
    u_char                     low[NGX_HTTP_SF_OAUTH_NAME_MAX];
    ngx_uint_t                 key;
    ngx_http_sf_oauth_cred_t  *cred;

    if (name->len == 0 || name->len > NGX_HTTP_SF_OAUTH_NAME_MAX) {
        return NULL;
    }

    key = ngx_hash_strlow(low, name->data, name->len);

    for (cred = ngx_hash_find(&smcf->names, key, low, name->len);
         cred;
         cred = cred->same_name)
    {
        if (ngx_strncmp(cred->name.data, name->data, name->len) == 0) {
            return cred;
        }
    }

    return NULL;
}
