
/*
 * The status output of "sf_oauth_info;": one JSON object per credential
 * with its state, token fingerprints, lease, counters and last error, for
 * the people on call.  Secrets appear only as fingerprints.
 */


#include "ngx_http_sf_oauth.h"


static u_char *ngx_http_sf_oauth_info_cred(u_char *p,
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_node_t *node,
    ngx_uint_t last);


static const char  *ngx_http_sf_oauth_states[] = {
    "empty", "valid", "failed"
};


/* the JSON of one credential is at most this long, the error escaped */
#define NGX_HTTP_SF_OAUTH_INFO_LEN                                           \
    (1024 + 2 * NGX_HTTP_SF_OAUTH_NAME_MAX + NGX_HTTP_SF_OAUTH_URL_MAX       \
     + 6 * NGX_HTTP_SF_OAUTH_ERROR_MAX)


ngx_int_t
ngx_http_sf_oauth_info_handler(ngx_http_request_t *r)
{
    u_char                         *p;
    ngx_int_t                       rc;
    ngx_buf_t                      *b;
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

    smcf = ngx_http_get_module_main_conf(r, ngx_http_sf_oauth_module);
    cred = smcf->creds.elts;

    b = ngx_create_temp_buf(r->pool, sizeof("{\"credentials\":[\n]}\n")
                                     + smcf->creds.nelts
                                       * NGX_HTTP_SF_OAUTH_INFO_LEN);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    node = ngx_palloc(r->pool, sizeof(ngx_http_sf_oauth_node_t));
    if (node == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(b->last, "{\"credentials\":[\n",
                   sizeof("{\"credentials\":[\n") - 1);

    for (i = 0; i < smcf->creds.nelts; i++) {
        ngx_http_sf_oauth_store_snapshot(cred[i], node);
        p = ngx_http_sf_oauth_info_cred(p, cred[i], node,
                                        i == smcf->creds.nelts - 1);
    }

    ngx_explicit_memzero(node, sizeof(ngx_http_sf_oauth_node_t));

    b->last = ngx_cpymem(p, "]}\n", sizeof("]}\n") - 1);

    return ngx_http_sf_oauth_send_json(r, NGX_HTTP_OK, b);
}


static u_char *
ngx_http_sf_oauth_info_cred(u_char *p, ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node, ngx_uint_t last)
{
    u_char      token_fp[NGX_HTTP_SF_OAUTH_FP_LEN];
    u_char      refresh_fp[NGX_HTTP_SF_OAUTH_FP_LEN];
    time_t      now;
    ngx_uint_t  rotated, refreshing;
    ngx_msec_t  retry;

    now = ngx_time();

    if (node->token_len) {
        ngx_memcpy(token_fp, node->token_fp, NGX_HTTP_SF_OAUTH_FP_LEN);

    } else {
        ngx_memset(token_fp, '-', NGX_HTTP_SF_OAUTH_FP_LEN);
    }

    ngx_http_sf_oauth_fingerprint(refresh_fp, node->refresh,
                                  node->refresh_len);

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

    /* names and URLs are checked printable; the error is escaped */

    p = ngx_sprintf(p, "{\"name\":\"%V\",\"zone\":\"%V\",\"state\":\"%s\","
                    "\"generation\":%ui,",
                    &cred->name, &cred->zone_name,
                    ngx_http_sf_oauth_states[node->state], node->generation);

    p = ngx_sprintf(p, "\"token_fp\":\"%*s\",\"token_age\":%T,"
                    "\"issued_at\":%uL,\"instance_url\":\"%*s\",",
                    (size_t) NGX_HTTP_SF_OAUTH_FP_LEN, token_fp,
                    node->token_len ? now - node->token_time : (time_t) -1,
                    node->issued_at, node->url_len, node->instance_url);

    p = ngx_sprintf(p, "\"refresh_token_fp\":\"%*s\","
                    "\"refresh_token_rotated\":%s,",
                    (size_t) NGX_HTTP_SF_OAUTH_FP_LEN, refresh_fp,
                    rotated ? "true" : "false");

    p = ngx_sprintf(p, "\"refreshing\":%s,\"lease_pid\":%P,"
                    "\"token_requests\":%ui,\"token_failures\":%ui,"
                    "\"consecutive_failures\":%ui,\"retry_in\":%M,"
                    "\"rejected_tokens\":%ui,\"replays\":%ui,"
                    "\"ahead_refreshes\":%ui,\"introspections\":%ui,"
                    "\"token_expires_in\":%T,",
                    refreshing ? "true" : "false",
                    refreshing ? node->lease_pid : 0,
                    node->token_requests, node->token_failures,
                    node->failures, retry, node->invalidations,
                    node->replays, node->ahead_refreshes,
                    node->introspections,
                    node->exp_generation == node->generation
                    && node->state == NGX_HTTP_SF_OAUTH_VALID
                    ? node->exp - now : (time_t) -1);

    p = ngx_cpymem(p, "\"last_error\":\"", sizeof("\"last_error\":\"") - 1);
    p = (u_char *) ngx_escape_json(p, node->error, node->error_len);

    p = ngx_sprintf(p, "\",\"last_error_age\":%T}%s\n",
                    node->error_time ? now - node->error_time : (time_t) -1,
                    last ? "" : ",");

    return p;
}
