
/*
 * Request handling: put the cached token on the request, or suspend the
 * request until a refresh gives one, or answer 502 with what failed.
 *
 * The handler runs in the precontent phase, after access control: a
 * request that auth_basic, auth_request or allow/deny turn away never
 * costs a token request, and an auth_request subrequest never carries the
 * Salesforce token.
 *
 * A waiting request is suspended without blocking the worker.  It is woken
 * by an event: at once when this worker's own token request completes, or
 * by a short timer (5 ms, backing off to 50 ms) that re-reads the zone
 * while another worker refreshes.  Each waiter has a deadline.
 */


#include "ngx_http_sf_oauth.h"


static ngx_int_t ngx_http_sf_oauth_apply(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_http_sf_oauth_lookup_t *lk);
static ngx_int_t ngx_http_sf_oauth_act(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_int_t rc,
    ngx_http_sf_oauth_lookup_t *lk);
static ngx_int_t ngx_http_sf_oauth_wait(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static void ngx_http_sf_oauth_wake(ngx_event_t *ev);
static void ngx_http_sf_oauth_unhold(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static void ngx_http_sf_oauth_replay(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static void ngx_http_sf_oauth_unwait(ngx_http_sf_oauth_ctx_t *ctx);
static void ngx_http_sf_oauth_cleanup(void *data);
static ngx_int_t ngx_http_sf_oauth_set_authorization(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *value);
static ngx_int_t ngx_http_sf_oauth_fail_request(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *error, time_t retry_after);
static ngx_int_t ngx_http_sf_oauth_send_error(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *error, time_t retry_after);


static ngx_str_t  ngx_http_sf_oauth_error_start =
    ngx_string("the token request could not be started");
static ngx_str_t  ngx_http_sf_oauth_error_timeout =
    ngx_string("timed out waiting for the token refresh");


ngx_int_t
ngx_http_sf_oauth_handler(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_http_sf_oauth_ctx_t       *ctx;
    ngx_http_sf_oauth_lookup_t     lk;
    ngx_http_sf_oauth_loc_conf_t  *slcf;

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_sf_oauth_module);

    if (slcf->cred == NULL || r != r->main) {
        return NGX_DECLINED;
    }

    ngx_http_sf_oauth_redact_install(r);

    ctx = ngx_http_get_module_ctx(r, ngx_http_sf_oauth_module);

    if (ctx == NULL) {

        /* the hot path: one allocation holds the ctx and the header */

        lk.ctx_size = sizeof(ngx_http_sf_oauth_ctx_t);

        rc = ngx_http_sf_oauth_store_lookup(slcf->cred, r->pool, &lk);

        ctx = lk.ctx;

        if (ctx == NULL) {
            ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_sf_oauth_ctx_t));
            if (ctx == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
        }

        ctx->request = r;
        ctx->cred = slcf->cred;

        ngx_http_set_ctx(r, ctx, ngx_http_sf_oauth_module);

        rc = ngx_http_sf_oauth_act(r, ctx, rc, &lk);

    } else if (ctx->waiting) {
        return NGX_AGAIN;

    } else if (ctx->authorization.len) {
        /* resumed after a wait, the header is in place */
        return NGX_DECLINED;

    } else {
        rc = ngx_http_sf_oauth_apply(r, ctx, &lk);
    }

    if (rc == NGX_HTTP_BAD_GATEWAY) {
        return ngx_http_sf_oauth_fail_request(r, ctx, &lk.error,
                                              lk.retry_after);
    }

    return rc;
}


/*
 * One zone lookup and what follows from it: NGX_DECLINED with the header
 * set, NGX_AGAIN while waiting, or NGX_HTTP_BAD_GATEWAY with lk->error.
 */

static ngx_int_t
ngx_http_sf_oauth_apply(ngx_http_request_t *r, ngx_http_sf_oauth_ctx_t *ctx,
    ngx_http_sf_oauth_lookup_t *lk)
{
    ngx_int_t  rc;

    lk->ctx_size = 0;

    rc = ngx_http_sf_oauth_store_lookup(ctx->cred, r->pool, lk);

    return ngx_http_sf_oauth_act(r, ctx, rc, lk);
}


/* what follows from the answer "rc" of a zone lookup */

static ngx_int_t
ngx_http_sf_oauth_act(ngx_http_request_t *r, ngx_http_sf_oauth_ctx_t *ctx,
    ngx_int_t rc, ngx_http_sf_oauth_lookup_t *lk)
{
    switch (rc) {

    case NGX_HTTP_SF_OAUTH_GOT_TOKEN:

        if (ngx_http_sf_oauth_set_authorization(r, ctx, &lk->authorization)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->authorization = lk->authorization;
        ctx->generation = lk->generation;

        if (ctx->status == 0) {
            ctx->status = NGX_HTTP_SF_OAUTH_HIT;
        }

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "sf_oauth: credential \"%V\": token generation %ui",
                       &ctx->cred->name, lk->generation);

        return NGX_DECLINED;

    case NGX_HTTP_SF_OAUTH_GOT_ERROR:
        return NGX_HTTP_BAD_GATEWAY;

    case NGX_HTTP_SF_OAUTH_GOT_LEASE:

        if (ngx_http_sf_oauth_start(ctx->cred, lk) != NGX_OK) {
            lk->error = ngx_http_sf_oauth_error_start;
            lk->retry_after = 1;
            return NGX_HTTP_BAD_GATEWAY;
        }

        /* fall through */

    case NGX_HTTP_SF_OAUTH_GOT_WAIT:
        return ngx_http_sf_oauth_wait(r, ctx);

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}


/* starts this worker's token request under the lease it has just taken */

ngx_int_t
ngx_http_sf_oauth_start(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_lookup_t *lk)
{
    ngx_int_t                  rc;
    ngx_http_sf_oauth_token_t  tok;

    ngx_http_sf_oauth_redact_remember(cred, lk->refresh_token.data,
                                      lk->refresh_token.len);

    rc = ngx_http_sf_oauth_client_start(cred, &lk->refresh_token, 0, 0);

    ngx_explicit_memzero(lk->refresh_token.data, lk->refresh_token.len);

    if (rc == NGX_OK) {
        return NGX_OK;
    }

    /* no request went out: record the failure so that others back off */

    ngx_memzero(&tok, sizeof(ngx_http_sf_oauth_token_t));
    tok.error = ngx_http_sf_oauth_error_start;
    tok.error_class = NGX_HTTP_SF_OAUTH_TRANSIENT;

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "sf_oauth: credential \"%V\": %V", &cred->name, &tok.error);

    ngx_http_sf_oauth_store_result(cred, &tok);

    return NGX_ERROR;
}


static ngx_int_t
ngx_http_sf_oauth_wait(ngx_http_request_t *r, ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_pool_cleanup_t  *cln;

    if (!ctx->cleanup) {
        cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        cln->handler = ngx_http_sf_oauth_cleanup;
        cln->data = ctx;
        ctx->cleanup = 1;

        ctx->wait.handler = ngx_http_sf_oauth_wake;
        ctx->wait.data = r->connection;
        ctx->wait.log = r->connection->log;
    }

    if (!ctx->wait_begun) {
        ctx->wait_begun = 1;
        ctx->deadline = ngx_current_msec + ctx->cred->timeout
                        + 2 * NGX_HTTP_SF_OAUTH_LEASE_SLACK;
        ctx->poll = NGX_HTTP_SF_OAUTH_POLL_MIN;

        if (ctx->status == 0) {
            ctx->status = NGX_HTTP_SF_OAUTH_WAIT;
        }

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "sf_oauth: credential \"%V\": waiting for a token",
                       &ctx->cred->name);
    }

    if (!ctx->waiting) {
        ctx->waiting = 1;
        ngx_queue_insert_tail(&ctx->cred->waiters, &ctx->queue);
    }

    ngx_add_timer(&ctx->wait, ctx->poll);

    ctx->poll = ngx_min(ctx->poll * 2, NGX_HTTP_SF_OAUTH_POLL_MAX);

    if (!ctx->held) {
        /* a client that goes away while waiting is noticed and finalized */
        r->read_event_handler = ngx_http_test_reading;
        r->write_event_handler = ngx_http_request_empty_handler;
    }

    /*
     * A held request keeps the handlers nginx gave it: the upstream's
     * while it drains the 401, then ngx_http_writer and
     * ngx_http_test_reading once it is parked.
     */

    return NGX_AGAIN;
}


/*
 * The header filter swallowed a 401 from Salesforce for this request and
 * holds it (see ngx_http_sf_oauth_filter.c).  It waits for a token like a
 * cold request, woken by the same events, and is then replayed.  The first
 * look at the zone is posted, never done in the filter's own call stack.
 */

ngx_int_t
ngx_http_sf_oauth_hold(ngx_http_request_t *r, ngx_http_sf_oauth_ctx_t *ctx)
{
    ctx->held = 1;
    ctx->status = NGX_HTTP_SF_OAUTH_RETRY;
    ctx->limit_rate = r->limit_rate;
    ctx->limit_rate_set = r->limit_rate_set;

    r->preserve_body = 1;
    r->buffered |= NGX_HTTP_SF_OAUTH_BUFFERED;

    ngx_http_sf_oauth_store_invalidate(ctx->cred, ctx->generation);

    ctx->wait_begun = 0;

    if (ngx_http_sf_oauth_wait(r, ctx) != NGX_AGAIN) {
        return NGX_ERROR;
    }

    ngx_del_timer(&ctx->wait);
    ngx_post_event(&ctx->wait, &ngx_posted_events);

    return NGX_OK;
}


static void
ngx_http_sf_oauth_wake(ngx_event_t *ev)
{
    ngx_int_t                    rc;
    ngx_connection_t            *c;
    ngx_http_request_t          *r;
    ngx_http_sf_oauth_ctx_t     *ctx;
    ngx_http_sf_oauth_lookup_t   lk;

    ctx = (ngx_http_sf_oauth_ctx_t *)
              ((u_char *) ev - offsetof(ngx_http_sf_oauth_ctx_t, wait));
    r = ctx->request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    ngx_http_sf_oauth_unwait(ctx);

    rc = ngx_http_sf_oauth_apply(r, ctx, &lk);

    if (rc == NGX_AGAIN) {
        if ((ngx_msec_int_t) (ctx->deadline - ngx_current_msec) > 0) {
            return;
        }

        ngx_http_sf_oauth_unwait(ctx);

        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "sf_oauth: credential \"%V\": %V",
                      &ctx->cred->name, &ngx_http_sf_oauth_error_timeout);

        lk.error = ngx_http_sf_oauth_error_timeout;
        lk.retry_after = 1;
        rc = NGX_HTTP_BAD_GATEWAY;
    }

    ctx->wait_begun = 0;

    if (ctx->held) {
        ngx_http_sf_oauth_unhold(r, ctx);
    }

    if (rc == NGX_DECLINED) {

        if (ctx->replayed) {
            ngx_http_sf_oauth_replay(r, ctx);

        } else {
            /* the header is set: go on with the phases where they stopped */
            r->read_event_handler = ngx_http_block_reading;
            r->write_event_handler = ngx_http_core_run_phases;
            ngx_http_core_run_phases(r);
        }

    } else if (rc == NGX_HTTP_BAD_GATEWAY) {
        (void) ngx_http_sf_oauth_fail_request(r, ctx, &lk.error,
                                              lk.retry_after);

    } else {
        ngx_http_finalize_request(r, rc);
    }

    ngx_http_run_posted_requests(c);
}


/*
 * Undoes what holding a 401 did to the request, so that a new response can
 * start from scratch: the replay's, or the 502.  No byte of the 401 has
 * left: it never got past this module's header filter.
 */

static void
ngx_http_sf_oauth_unhold(ngx_http_request_t *r, ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_connection_t  *c;

    c = r->connection;

    ctx->held = 0;
    ctx->replayed = 1;

    r->buffered &= ~NGX_HTTP_SF_OAUTH_BUFFERED;

    /* ngx_http_writer set send_timeout while the request was parked */
    if (c->write->timer_set && !c->write->delayed) {
        ngx_del_timer(c->write);
    }

    ngx_http_clean_header(r);

    r->disable_not_modified = 0;
    r->allow_ranges = 0;
    r->single_range = 0;
    r->limit_rate = ctx->limit_rate;
    r->limit_rate_set = ctx->limit_rate_set;
}


/*
 * Runs the location's content handler again, the proxy's: it creates a new
 * upstream (closing one that may still drain the 401) and finds the request
 * body read already, so it sends the same method, headers and body.
 */

static void
ngx_http_sf_oauth_replay(ngx_http_request_t *r, ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_http_variable_value_t      *vv;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "sf_oauth: credential \"%V\": replaying the request",
                   &ctx->cred->name);

    /* a cached $http_authorization would resend the dead token */

    smcf = ngx_http_get_module_main_conf(r, ngx_http_sf_oauth_module);
    vv = &r->variables[smcf->authorization_index];
    vv->valid = 0;
    vv->not_found = 0;

    if (r->content_handler == NULL) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "sf_oauth: no content handler to replay the request");
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_http_finalize_request(r, r->content_handler(r));
}


static void
ngx_http_sf_oauth_unwait(ngx_http_sf_oauth_ctx_t *ctx)
{
    if (ctx->wait.timer_set) {
        ngx_del_timer(&ctx->wait);
    }

    if (ctx->wait.posted) {
        ngx_delete_posted_event(&ctx->wait);
    }

    if (ctx->waiting) {
        ngx_queue_remove(&ctx->queue);
        ctx->waiting = 0;
    }
}


static void
ngx_http_sf_oauth_cleanup(void *data)
{
    ngx_http_sf_oauth_ctx_t  *ctx = data;

    ngx_http_sf_oauth_unwait(ctx);
}


/*
 * This worker's token request is over: store the outcome, say so in the
 * log, and wake this worker's waiters at once.  Waiters in other workers
 * see the change on their next poll.
 */

void
ngx_http_sf_oauth_refresh_done(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_token_t *tok)
{
    u_char                    fp[NGX_HTTP_SF_OAUTH_FP_LEN];
    ngx_queue_t              *q;
    ngx_http_sf_oauth_ctx_t  *ctx;

    if (tok->ok) {
        ngx_http_sf_oauth_redact_remember(cred, tok->access_token.data,
                                          tok->access_token.len);

        if (tok->refresh_token.len) {
            ngx_http_sf_oauth_redact_remember(cred, tok->refresh_token.data,
                                              tok->refresh_token.len);
        }

        ngx_http_sf_oauth_fingerprint(fp, tok->access_token.data,
                                      tok->access_token.len);

        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": new access token "
                      "fp:%*s for \"%V\"%s", &cred->name,
                      (size_t) NGX_HTTP_SF_OAUTH_FP_LEN, fp,
                      &tok->instance_url,
                      tok->refresh_token.len ? ", refresh token rotated" : "");

    } else {
        /* an error text is built from the endpoint's answer: scrub it */
        tok->error.len = ngx_http_sf_oauth_redact(cred, tok->error.data,
                                                  tok->error.len,
                                                  tok->error.len);

        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": %V; %V",
                      &cred->name, &tok->error, &tok->hint);
    }

    ngx_http_sf_oauth_store_result(cred, tok);

    if (tok->ok) {
        ngx_http_sf_oauth_state_save(cred);
    }

    for (q = ngx_queue_head(&cred->waiters);
         q != ngx_queue_sentinel(&cred->waiters);
         q = ngx_queue_next(q))
    {
        ctx = ngx_queue_data(q, ngx_http_sf_oauth_ctx_t, queue);

        if (ctx->wait.timer_set) {
            ngx_del_timer(&ctx->wait);
        }

        if (!ctx->wait.posted) {
            ngx_post_event(&ctx->wait, &ngx_posted_events);
        }
    }
}


/*
 * The token goes into the Authorization header that proxy_pass forwards.
 * It stays there only while the upstream request is built: the header
 * filter and the log phase put the client's own value back (see
 * ngx_http_sf_oauth_hide_authorization), so that $http_authorization in
 * add_header or access_log never shows the token.  The element's
 * lowcase_key marks a value of ours.
 */

static u_char  ngx_http_sf_oauth_lowcase_key[] = "authorization";


static ngx_int_t
ngx_http_sf_oauth_set_authorization(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = r->headers_in.authorization;

    if (h == NULL) {
        h = ngx_list_push(&r->headers_in.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        ngx_str_set(&h->key, "Authorization");
        r->headers_in.authorization = h;

    } else if (h->lowcase_key != ngx_http_sf_oauth_lowcase_key) {
        ctx->client_authorization = h->value;
        ctx->client_had_authorization = 1;
    }

    h->lowcase_key = ngx_http_sf_oauth_lowcase_key;
    h->hash = ngx_hash_key(h->lowcase_key, sizeof("authorization") - 1);
    h->value = *value;

    return NGX_OK;
}


void
ngx_http_sf_oauth_hide_authorization(ngx_http_request_t *r)
{
    ngx_table_elt_t          *h;
    ngx_http_sf_oauth_ctx_t  *ctx;

    h = r->headers_in.authorization;

    if (h == NULL
        || h->lowcase_key != ngx_http_sf_oauth_lowcase_key
        || h->hash == 0)
    {
        return;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_sf_oauth_module);

    if (ctx && ctx->client_had_authorization) {
        h->value = ctx->client_authorization;
        return;
    }

    /* no client value known: hide the element from $http_authorization */
    h->hash = 0;
    ngx_str_null(&h->value);
}


/* the log phase: runs before the access log, see ngx_http_sf_oauth_init */

ngx_int_t
ngx_http_sf_oauth_log_handler(ngx_http_request_t *r)
{
    ngx_http_sf_oauth_hide_authorization(r);

    return NGX_OK;
}


/* answers 502 with the JSON error and finalizes the request */

static ngx_int_t
ngx_http_sf_oauth_fail_request(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *error, time_t retry_after)
{
    ngx_http_finalize_request(r,
                   ngx_http_sf_oauth_send_error(r, ctx, error, retry_after));

    return NGX_DONE;
}


static ngx_int_t
ngx_http_sf_oauth_send_error(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *error, time_t retry_after)
{
    size_t             len;
    u_char            *p;
    ngx_buf_t         *b;
    ngx_int_t          rc;
    ngx_table_elt_t   *h;

    ctx->status = NGX_HTTP_SF_OAUTH_ERROR;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    len = sizeof("{\"error\":\"sf_oauth_token_unavailable\","
                 "\"error_description\":\"\",\"credential\":\"\"}\n") - 1
          + error->len + ngx_escape_json(NULL, error->data, error->len)
          + ctx->cred->name.len;

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(b->last, "{\"error\":\"sf_oauth_token_unavailable\","
                            "\"error_description\":\"",
                   sizeof("{\"error\":\"sf_oauth_token_unavailable\","
                          "\"error_description\":\"") - 1);
    p = (u_char *) ngx_escape_json(p, error->data, error->len);
    p = ngx_cpymem(p, "\",\"credential\":\"",
                   sizeof("\",\"credential\":\"") - 1);
    p = ngx_cpymem(p, ctx->cred->name.data, ctx->cred->name.len);
    p = ngx_cpymem(p, "\"}\n", sizeof("\"}\n") - 1);

    b->last = p;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-store");

    if (retry_after > 0) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->value.data = ngx_pnalloc(r->pool, NGX_TIME_T_LEN);
        if (h->value.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Retry-After");
        h->value.len = ngx_sprintf(h->value.data, "%T", retry_after)
                       - h->value.data;
    }

    return ngx_http_sf_oauth_send_json(r, NGX_HTTP_BAD_GATEWAY, b);
}


/* sends a JSON body made by this module: the 502 error, sf_oauth_info */

ngx_int_t
ngx_http_sf_oauth_send_json(ngx_http_request_t *r, ngx_uint_t status,
    ngx_buf_t *b)
{
    ngx_int_t    rc;
    ngx_chain_t  out;

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}
