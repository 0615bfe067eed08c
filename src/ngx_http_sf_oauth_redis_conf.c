
/*
 * The sf_oauth_redis block, read when the configuration is loaded: its
 * parameters (through the dispatcher of ngx_http_sf_oauth_block.c), the
 * server's address, resolved here and never in a worker, and the TLS
 * context.  The client that uses them is ngx_http_sf_oauth_redis.c.
 */


#include "ngx_http_sf_oauth.h"


/* the sf_oauth_redis block */

static char *ngx_http_sf_oauth_redis_server(ngx_conf_t *cf,
    ngx_http_sf_oauth_redis_t *rd);
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

    if (rd->server.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "sf_oauth_redis \"%V\" has no \"server\"",
                           &rd->name);
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

    rv = ngx_http_sf_oauth_redis_server(cf, rd);
    if (rv != NGX_CONF_OK) {
        return rv;
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


/*
 * The server's address: "unix:PATH", or HOST:PORT resolved now, when the
 * configuration is loaded, never in a worker.
 */

static char *
ngx_http_sf_oauth_redis_server(ngx_conf_t *cf, ngx_http_sf_oauth_redis_t *rd)
{
    ngx_url_t  u;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = rd->server;
    u.default_port = 6379;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid server \"%V\" in sf_oauth_redis \"%V\": "
                           "%s", &rd->server, &rd->name,
                           u.err ? u.err : "host not found");
        return NGX_CONF_ERROR;
    }

    if (u.naddrs > 1) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "server \"%V\" of sf_oauth_redis \"%V\" has %ui "
                           "addresses: the first, \"%V\", is used",
                           &rd->server, &rd->name, u.naddrs,
                           &u.addrs[0].name);
    }

    rd->addr = u.addrs[0];

    rd->host.len = u.host.len;
    rd->host.data = ngx_pnalloc(cf->pool, u.host.len + 1);
    if (rd->host.data == NULL) {
        return NGX_CONF_ERROR;
    }

    *ngx_cpymem(rd->host.data, u.host.data, u.host.len) = '\0';

    rd->host_is_ip = (ngx_inet_addr(rd->host.data, rd->host.len)
                      != INADDR_NONE);

    return NGX_CONF_OK;
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
