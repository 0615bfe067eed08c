
/*
 * The response filter: the 401 replay, and the token leaving the request.
 *
 * Why "swallow, hold, re-run" and not a subrequest or error_page: the
 * operator writes only "sf_oauth NAME;" and proxy_pass.  error_page with
 * proxy_intercept_errors would need lines in their configuration, and a
 * subrequest for the replay would still need the main request's 401 held
 * back exactly as here, plus header copying.  So the main request itself
 * is replayed:
 *
 *   - The module is an HTTP_FILTER module without ngx_module_order, so its
 *     header filter runs before add_header, gzip, the chunked filter and
 *     the header writer.  A 401 stopped here has touched nothing of the
 *     client's connection: no header sent, no chunked or keepalive state.
 *   - The header filter swallows the upstream's 401: it marks the request
 *     body to be kept (r->preserve_body: else the upstream closes a body
 *     temp file), holds the request with a bit of r->buffered that no
 *     stock module sets on r->buffered (NGX_HTTP_SF_OAUTH_BUFFERED says
 *     why), and returns NGX_OK without calling the next filter.  Holding with r->main->count instead crashed: the upstream's
 *     finalize consumes the count while the replayed upstream is live.
 *   - The body filter marks every buffer of the 401 consumed.  The
 *     upstream drains it, gives a keepalive connection back to its pool,
 *     and its final ngx_http_finalize_request() parks the request because
 *     of the buffered bit, with ngx_http_test_reading watching the client.
 *     The last buffer wakes the request at once, so that the writer's
 *     send_timeout is taken off: a held request sends nothing, and only
 *     the module's own deadline bounds its wait.
 *   - When the refresh completes, ngx_http_sf_oauth_handler.c clears the
 *     header, sets the new token and runs the proxy's content handler
 *     again: a new upstream, the same method, headers and body.
 *   - When the refresh fails instead, an upstream still streaming the
 *     401 is ended first (as ngx_http_upstream_create() ends one), and
 *     only then does the request get the module's 502.
 *
 * This was verified on the stock Debian nginx 1.22.1 with GET, POST,
 * PATCH, HEAD, bodies spooled to temp files, chunked and 20 MiB responses,
 * proxy_buffering off, gzip, upstream and client keepalive, HTTP/2 and
 * client aborts; t/10-replay.t keeps it so.
 *
 * Limits: a body streamed with proxy_request_buffering off is gone, so
 * such a 401 passes through; a replayed request's own 401 passes through,
 * never a second refresh.  Whether a 401 drops the token and refreshes,
 * or waits because refreshes did not cure 401s lately, is the store's
 * rule (ngx_http_sf_oauth_store_rejected).
 */


#include "ngx_http_sf_oauth.h"


static ngx_int_t ngx_http_sf_oauth_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_sf_oauth_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_int_t ngx_http_sf_oauth_replayable(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


ngx_int_t
ngx_http_sf_oauth_filter_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_sf_oauth_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_sf_oauth_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_sf_oauth_header_filter(ngx_http_request_t *r)
{
    ngx_http_sf_oauth_ctx_t  *ctx;

    ctx = ngx_http_sf_oauth_get_ctx(r);

    if (ctx == NULL) {
        return ngx_http_next_header_filter(r);
    }

    /* only a main request is held and replayed */

    if (r == r->main
        && ctx->authorization.len
        && ctx == ngx_http_get_module_ctx(r, ngx_http_sf_oauth_module)
        && r->headers_out.status == NGX_HTTP_UNAUTHORIZED
        && r->upstream
        && r->upstream == ctx->upstream
        && r->upstream->headers_in.status_n == NGX_HTTP_UNAUTHORIZED
        && !r->header_sent
        && ngx_http_sf_oauth_replayable(r, ctx))
    {
        ngx_http_sf_oauth_unset_token(r, ctx);

        /* a swallowed 401 is not cached either */
        r->upstream->cacheable = 0;

        if (ngx_http_sf_oauth_hold(r, ctx) == NGX_OK) {
            /* swallowed: nothing of this 401 goes further */
            return NGX_OK;
        }

        return NGX_ERROR;
    }

    ngx_http_sf_oauth_response_header(r, ctx);

    return ngx_http_next_header_filter(r);
}


/* whether this upstream 401 is to be replayed, and why not if not */

static ngx_int_t
ngx_http_sf_oauth_replayable(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    if (ctx->replayed) {
        /* the replay's own 401 passes: one refresh and one replay at most */
        return 0;
    }

    if (r->request_body_no_buffering) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "sf_oauth: credential \"%V\": upstream 401 passed "
                      "through, not replayed: the request body was streamed "
                      "(proxy_request_buffering off) and is gone",
                      &ctx->cred->name);
        return 0;
    }

    return 1;
}


static ngx_int_t
ngx_http_sf_oauth_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_uint_t                last;
    ngx_chain_t              *cl;
    ngx_http_sf_oauth_ctx_t  *ctx;

    if (r != r->main) {
        return ngx_http_next_body_filter(r, in);
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_sf_oauth_module);

    if (ctx == NULL || !ctx->held) {
        return ngx_http_next_body_filter(r, in);
    }

    /* the swallowed 401's body: consumed, so the upstream drains it */

    last = 0;

    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;

        if (cl->buf->in_file) {
            cl->buf->file_pos = cl->buf->file_last;
        }

        if (cl->buf->last_buf) {
            last = 1;
        }
    }

    if (last) {
        /* the upstream finalizes the request now: parked, then woken */
        ngx_http_sf_oauth_wake_now(ctx);
    }

    return NGX_OK;
}
