
/*
 * The status output of "sf_oauth_info;": one JSON object per credential
 * with its state, token fingerprints, lease, counters and last error, for
 * the people on call.  Secrets appear only as fingerprints.
 */


#include "ngx_http_sf_oauth.h"


static size_t ngx_http_sf_oauth_info_len(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node);
static u_char *ngx_http_sf_oauth_info_cred(u_char *p, u_char *last,
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_node_t *node,
    ngx_uint_t last_cred);
static u_char *ngx_http_sf_oauth_status_json_opt(u_char *p, u_char *last,
    const char *key, ngx_str_t *s);


static const char  *ngx_http_sf_oauth_states[] = {
    "empty", "valid", "failed"
};


/*
 * The JSON of one credential is sized from what it prints: the strings
 * by their escaped lengths, plus a bound on the rest, the keys and
 * punctuation (about 600 bytes) and the numbers, each at most
 * NGX_INT64_LEN.  Printing is bounded by that size all the same.
 */

#define NGX_HTTP_SF_OAUTH_INFO_KEYS      1400
#define NGX_HTTP_SF_OAUTH_INFO_NUMBERS   20


static const char  *ngx_http_sf_oauth_grants[] = {
    "refresh_token", "jwt_bearer", "client_credentials"
};


ngx_int_t
ngx_http_sf_oauth_status_handler(ngx_http_request_t *r)
{
    u_char                         *p, *last;
    size_t                          len;
    ngx_int_t                       rc;
    ngx_buf_t                      *b;
    ngx_str_t                      *part, format;
    ngx_uint_t                      i;
    ngx_http_sf_oauth_node_t       *node;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_arg(r, (u_char *) "format", sizeof("format") - 1, &format)
        == NGX_OK)
    {
        if (format.len == sizeof("prometheus") - 1
            && ngx_strncmp(format.data, "prometheus", format.len) == 0)
        {
            return ngx_http_sf_oauth_metrics_handler(r);
        }

        if (format.len != sizeof("json") - 1
            || ngx_strncmp(format.data, "json", format.len) != 0)
        {
            return NGX_HTTP_BAD_REQUEST;
        }
    }

    smcf = ngx_http_get_module_main_conf(r, ngx_http_sf_oauth_module);
    cred = smcf->creds.elts;

    node = ngx_palloc(r->pool, sizeof(ngx_http_sf_oauth_node_t));
    if (node == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    part = ngx_palloc(r->pool, (smcf->creds.nelts + 1) * sizeof(ngx_str_t));
    if (part == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* each credential from one snapshot: sized, then printed */

    len = sizeof("{\"credentials\":[\n]}\n") - 1;

    for (i = 0; i < smcf->creds.nelts; i++) {
        ngx_http_sf_oauth_store_snapshot(cred[i], node);

        part[i].len = ngx_http_sf_oauth_info_len(cred[i], node);
        part[i].data = ngx_pnalloc(r->pool, part[i].len);

        if (part[i].data == NULL) {
            ngx_explicit_memzero(node, sizeof(ngx_http_sf_oauth_node_t));
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        last = part[i].data + part[i].len;
        p = ngx_http_sf_oauth_info_cred(part[i].data, last, cred[i], node,
                                        i == smcf->creds.nelts - 1);

        if (p == last) {
            ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                          "sf_oauth: the status of credential \"%V\" was "
                          "cut at %uz bytes", &cred[i]->name, part[i].len);
        }

        part[i].len = p - part[i].data;
        len += part[i].len;
    }

    ngx_explicit_memzero(node, sizeof(ngx_http_sf_oauth_node_t));

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(b->last, "{\"credentials\":[\n",
                   sizeof("{\"credentials\":[\n") - 1);

    for (i = 0; i < smcf->creds.nelts; i++) {
        p = ngx_cpymem(p, part[i].data, part[i].len);
    }

    b->last = ngx_cpymem(p, "]}\n", sizeof("]}\n") - 1);

    return ngx_http_sf_oauth_send(r, NGX_HTTP_OK, "application/json", b);
}


static size_t
ngx_http_sf_oauth_info_len(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node)
{
    size_t                           redis;
    ngx_http_sf_oauth_zone_t        *zone;
    ngx_http_sf_oauth_redis_view_t   view;

    zone = cred->shm_zone->data;
    redis = 0;

    if (zone->redis) {
        /* the strings of the connection's view, escaped at worst */
        ngx_http_sf_oauth_redis_view(zone->redis, &view);
        redis = 6 * (view.primary.len + view.sentinel.len + view.role.len
                     + view.watched.len);
    }

    return NGX_HTTP_SF_OAUTH_INFO_KEYS
           + redis
           + NGX_HTTP_SF_OAUTH_INFO_NUMBERS * NGX_INT64_LEN
           + cred->name.len
           + ngx_escape_json(NULL, cred->name.data, cred->name.len)
           + cred->zone_name.len
           + ngx_escape_json(NULL, cred->zone_name.data, cred->zone_name.len)
           + node->url_len
           + ngx_escape_json(NULL, node->instance_url, node->url_len)
           + node->error_len
           + ngx_escape_json(NULL, node->error, node->error_len)
           /* the fleet's name and lease owner, escaped at worst */
           + 6 * (NGX_HTTP_SF_OAUTH_NAME_MAX + NGX_HTTP_SF_OAUTH_OWNER_MAX)
           + sizeof(",\"key_fp\":\"\",\"key_mismatch\":false")
           + NGX_HTTP_SF_OAUTH_FP_LEN;
}


static u_char *
ngx_http_sf_oauth_info_cred(u_char *p, u_char *last,
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_node_t *node,
    ngx_uint_t last_cred)
{
    u_char                          token_fp[NGX_HTTP_SF_OAUTH_FP_LEN];
    u_char                          refresh_fp[NGX_HTTP_SF_OAUTH_FP_LEN];
    time_t                          now;
    ngx_uint_t                      rotated, refreshing;
    ngx_msec_t                      retry;
    ngx_http_sf_oauth_zone_t       *zone;
    ngx_http_sf_oauth_redis_view_t  view;

    now = ngx_time();

    if (node->token_len) {
        ngx_memcpy(token_fp, node->token_fp, NGX_HTTP_SF_OAUTH_FP_LEN);

    } else {
        ngx_memset(token_fp, '-', NGX_HTTP_SF_OAUTH_FP_LEN);
    }

    if (node->refresh_len) {
        ngx_http_sf_oauth_redact_fingerprint(refresh_fp, node->refresh,
                                             node->refresh_len);

    } else {
        /* the grants other than the refresh token's have none */
        ngx_memset(refresh_fp, '-', NGX_HTTP_SF_OAUTH_FP_LEN);
    }

    rotated = node->refresh_len != cred->refresh_token.len
              || ngx_memcmp(node->refresh, cred->refresh_token.data,
                            node->refresh_len) != 0;

    refreshing = node->lease_pid != 0
                 && (ngx_msec_int_t) (node->lease_deadline - ngx_current_msec)
                    > 0;

    retry = 0;

    if (node->state == NGX_HTTP_SF_OAUTH_FAILED
        && (ngx_msec_int_t) (node->backoff_until - ngx_current_msec) > 0)
    {
        retry = (node->backoff_until - ngx_current_msec + 999) / 1000;
    }

    /* every string is escaped, whatever was checked before */

    p = ngx_http_sf_oauth_status_json_str(p, last, "{\"name\":",
                                          cred->name.data, cred->name.len);
    p = ngx_http_sf_oauth_status_json_str(p, last, ",\"zone\":",
                                          cred->zone_name.data,
                                          cred->zone_name.len);

    p = ngx_slprintf(p, last, ",\"grant\":\"%s\"",
                     ngx_http_sf_oauth_grants[cred->grant]);

    p = ngx_slprintf(p, last, ",\"state\":\"%s\",\"generation\":%ui,",
                     ngx_http_sf_oauth_store_not_connected(cred, node)
                     ? "not connected"
                     : ngx_http_sf_oauth_states[node->state],
                     node->generation);

    p = ngx_slprintf(p, last, "\"token_fp\":\"%*s\",\"token_age\":%T,"
                     "\"issued_at\":%uL",
                     (size_t) NGX_HTTP_SF_OAUTH_FP_LEN, token_fp,
                     node->token_len ? now - node->token_time : (time_t) -1,
                     node->issued_at);

    p = ngx_http_sf_oauth_status_json_str(p, last, ",\"instance_url\":",
                                          node->instance_url, node->url_len);

    p = ngx_slprintf(p, last, ",\"refresh_token_fp\":\"%*s\","
                     "\"refresh_token_rotated\":%s,",
                     (size_t) NGX_HTTP_SF_OAUTH_FP_LEN, refresh_fp,
                     rotated ? "true" : "false");

    p = ngx_slprintf(p, last, "\"refreshing\":%s,\"lease_pid\":%P,"
                     "\"token_requests\":%ui,\"token_failures\":%ui,"
                     "\"consecutive_failures\":%ui,\"retry_in\":%M,"
                     "\"rejected_tokens\":%ui,\"replays\":%ui,"
                     "\"ahead_refreshes\":%ui,\"introspections\":%ui,"
                     "\"token_expires_in\":%T",
                     refreshing ? "true" : "false",
                     refreshing ? node->lease_pid : 0,
                     node->token_requests, node->token_failures,
                     node->failures, retry, node->invalidations,
                     node->replays, node->ahead_refreshes,
                     node->introspections,
                     node->exp_generation == node->generation
                     && node->state == NGX_HTTP_SF_OAUTH_VALID
                     ? node->exp - now : (time_t) -1);

    p = ngx_http_sf_oauth_status_json_str(p, last, ",\"last_error\":",
                                          node->error, node->error_len);

    p = ngx_slprintf(p, last, ",\"last_error_age\":%T",
                     node->error_time ? now - node->error_time : (time_t) -1);

    /* the org's API usage, from Sforce-Limit-Info */

    if (node->api_limit) {
        p = ngx_slprintf(p, last, ",\"api_usage\":{\"used\":%ui,"
                         "\"limit\":%ui,\"age\":%T}",
                         node->api_used, node->api_limit,
                         now - node->api_time);

    } else {
        p = ngx_slprintf(p, last, ",\"api_usage\":null");
    }

    /* the fleet, as this worker sees it; the lease owner is no secret */

    zone = cred->shm_zone->data;

    if (zone->redis) {
        p = ngx_http_sf_oauth_status_json_str(p, last, ",\"redis\":{\"name\":",
                                              zone->redis->name.data,
                                              zone->redis->name.len);
        p = ngx_slprintf(p, last, ",\"connected\":%s,"
                         "\"fleet_generation\":%ui,\"unsynced\":%s",
                         ngx_http_sf_oauth_fleet_connected(cred)
                         ? "true" : "false",
                         node->fleet_generation,
                         node->fleet_dirty ? "true" : "false");
        p = ngx_http_sf_oauth_status_json_str(p, last, ",\"lease_owner\":",
                                              node->fleet_owner,
                                              node->fleet_owner_len);

        /*
         * the primary the command connection is on, who said so, what
         * ROLE said of it, the sentinel listened to, the last success
         */
        ngx_http_sf_oauth_redis_view(zone->redis, &view);

        if (view.primary.len) {
            p = ngx_http_sf_oauth_status_json_str(p, last, ",\"primary\":",
                                                  view.primary.data,
                                                  view.primary.len);
            p = ngx_slprintf(p, last, ",\"primary_from\":\"%s\"",
                             view.source);

        } else {
            p = ngx_slprintf(p, last, ",\"primary\":null,"
                             "\"primary_from\":null");
        }

        p = ngx_http_sf_oauth_status_json_opt(p, last, ",\"role\":",
                                              &view.role);
        p = ngx_http_sf_oauth_status_json_opt(p, last, ",\"sentinel\":",
                                              &view.sentinel);
        p = ngx_http_sf_oauth_status_json_opt(p, last,
                                              ",\"sentinel_subscribed\":",
                                              &view.watched);
        p = ngx_slprintf(p, last, ",\"last_ok_ms\":%M", view.ok_ago);

        /* after a change of primary, and while Redis is down: ms left */
        p = ngx_slprintf(p, last, ",\"failovers\":%ui,\"quarantine_ms\":%M,"
                         "\"failover_wait_ms\":%M",
                         ngx_http_sf_oauth_store_fleet_failovers(cred),
                         ngx_http_sf_oauth_fleet_quarantine(cred),
                         ngx_http_sf_oauth_fleet_failover_left(cred));

        /* the key's fingerprint: the same on every node of the fleet */
        p = ngx_slprintf(p, last,
                         ",\"key_fp\":\"%*s\",\"key_mismatch\":%s}",
                         (size_t) NGX_HTTP_SF_OAUTH_FP_LEN, zone->key_fp,
                         ngx_memcmp(node->fleet_key_mismatch, zone->key_fp,
                                    NGX_HTTP_SF_OAUTH_FP_LEN) == 0
                         ? "true" : "false");

    } else {
        p = ngx_slprintf(p, last, ",\"redis\":null");
    }

    p = ngx_slprintf(p, last, "}%s\n", last_cred ? "" : ",");

    return p;
}


/* a key and its string value, or null when the string is empty */

static u_char *
ngx_http_sf_oauth_status_json_opt(u_char *p, u_char *last, const char *key,
    ngx_str_t *s)
{
    if (s->len) {
        return ngx_http_sf_oauth_status_json_str(p, last, key, s->data,
                                                 s->len);
    }

    return ngx_slprintf(p, last, "%snull", key);
}


/* a key and its string value, escaped, if all of it fits */

u_char *
ngx_http_sf_oauth_status_json_str(u_char *p, u_char *last, const char *key,
    u_char *s, size_t len)
{
    size_t  klen;

    klen = ngx_strlen(key);

    if ((size_t) (last - p)
        < klen + 2 + len + ngx_escape_json(NULL, s, len))
    {
        return last;
    }

    p = ngx_cpymem(p, key, klen);
    *p++ = '"';
    p = (u_char *) ngx_escape_json(p, s, len);
    *p++ = '"';

    return p;
}
