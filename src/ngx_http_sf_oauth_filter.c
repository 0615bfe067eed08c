
/*
 * The response filter: the dead-session replay, and the token leaving the
 * request.  A dead session is a REST 401, a SOAP 500 INVALID_SESSION_ID
 * fault or a Bulk 1.0 400 InvalidSessionId (ngx_http_sf_oauth_verdict.c),
 * or a CometD handshake's 200 that says so (ngx_http_sf_oauth_bayeux.c);
 * "the 401" below stands for any of them.  A CometD connect's 200 that
 * says so is read the same way, but not replayed: it goes on with its
 * advice rewritten (ngx_http_sf_oauth_reconnect).
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
 *   - The header filter holds back a candidate answer (a 401, a SOAP 500,
 *     a Bulk 400): it marks the request body to be kept
 *     (r->preserve_body: else the upstream closes a body temp file), holds
 *     the request with a bit of r->buffered that no stock module sets on
 *     r->buffered (NGX_HTTP_SF_OAUTH_BUFFERED says why), and returns
 *     NGX_OK without calling the next filter.  Holding with
 *     r->main->count instead crashed: the upstream's finalize consumes the
 *     count while the replayed upstream is live.
 *   - The body filter reads the candidate's body, at most
 *     NGX_HTTP_SF_OAUTH_INSPECT_MAX bytes, into a buffer of its own, and
 *     asks for the verdict.  An answer that is not about the session goes
 *     on: its header, the bytes read, then the rest as it comes.
 *   - The body filter marks every buffer of the 401 consumed.  The
 *     upstream drains it, gives a keepalive connection back to its pool,
 *     and its final ngx_http_finalize_request() parks the request because
 *     of the buffered bit, with ngx_http_test_reading watching the client.
 *     The last buffer wakes the request at once, so that the writer's
 *     send_timeout is taken off: a held request sends nothing, and only
 *     the module's own deadline bounds its wait.
 *   - When the refresh completes, ngx_http_sf_oauth_wait.c clears the
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
 * such a 401 passes through.  A replayed request's own 401 passes through,
 * never a second refresh, unless the replay's token was older than the
 * request's 401, came from another node, or cured another replay's 401
 * already, and refreshes cured 401s lately
 * (ngx_http_sf_oauth_wait_is_stale_replay): then the request is held and
 * replayed once more.  Whether a 401 drops the token and refreshes, or
 * waits because refreshes did not cure 401s lately, is the store's rule
 * (ngx_http_sf_oauth_store_rejected).
 */


#include "ngx_http_sf_oauth.h"


static ngx_int_t ngx_http_sf_oauth_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_sf_oauth_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_int_t ngx_http_sf_oauth_candidate(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static ngx_int_t ngx_http_sf_oauth_replayable(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static ngx_int_t ngx_http_sf_oauth_inspect(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_chain_t *in);
static ngx_int_t ngx_http_sf_oauth_dead(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_uint_t whole, ngx_str_t *rewritten);
static ngx_int_t ngx_http_sf_oauth_reconnect(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_chain_t *in, ngx_str_t *rewritten);
static ngx_int_t ngx_http_sf_oauth_pass(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static void ngx_http_sf_oauth_consume(ngx_chain_t *in);


static ngx_str_t  ngx_http_sf_oauth_limit_info =
    ngx_string("Sforce-Limit-Info");


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
    ngx_table_elt_t          *h;
    ngx_http_sf_oauth_ctx_t  *ctx;

    ctx = ngx_http_sf_oauth_handler_ctx(r);

    if (ctx == NULL) {
        return ngx_http_next_header_filter(r);
    }

    if (r->upstream && r->upstream == ctx->upstream) {
        /* the org's API usage: one header lookup, no lock */

        h = ngx_http_sf_oauth_inject_find_header(
                                           &r->upstream->headers_in.headers,
                                           &ngx_http_sf_oauth_limit_info,
                                           NULL);
        if (h) {
            ngx_http_sf_oauth_metrics_usage(ctx->cred, &h->value);
        }
    }

    /*
     * A Pub/Sub unary call answered UNAUTHENTICATED, trailers-only, is
     * held and replayed; any other gRPC answer passes (see
     * ngx_http_sf_oauth_grpc.c).
     */

    if (ctx->kind == NGX_HTTP_SF_OAUTH_GRPC) {

        if (r == r->main
            && ctx->authorization.len
            && ctx == ngx_http_get_module_ctx(r, ngx_http_sf_oauth_module)
            && r->upstream
            && r->upstream == ctx->upstream
            && !r->header_sent
            && ngx_http_sf_oauth_grpc_unary(r)
            && ngx_http_sf_oauth_grpc_dead(&r->headers_out.headers)
            && ngx_http_sf_oauth_replayable(r, ctx))
        {
            ngx_http_sf_oauth_inject_unset_token(r, ctx);
            r->upstream->cacheable = 0;

            return ngx_http_sf_oauth_wait_hold(r, ctx);
        }

        ngx_http_sf_oauth_handler_response_header(r, ctx);

        return ngx_http_next_header_filter(r);
    }

    /*
     * Only a main request's response from the upstream that got the
     * token is held and replayed, and only one that may say the session
     * is dead: a 401, a SOAP 500, a Bulk 1.0 400, a CometD handshake's or
     * connect's 200.
     */

    if (r == r->main
        && ctx->authorization.len
        && ctx == ngx_http_get_module_ctx(r, ngx_http_sf_oauth_module)
        && r->upstream
        && r->upstream == ctx->upstream
        && r->upstream->headers_in.status_n == r->headers_out.status
        && ngx_http_sf_oauth_candidate(r, ctx)
        && !r->header_sent
        && ngx_http_sf_oauth_replayable(r, ctx))
    {
        ngx_http_sf_oauth_inject_unset_token(r, ctx);

        /* a response held for the session is not cached either */
        r->upstream->cacheable = 0;
        r->preserve_body = 1;

        /* a replay's answer is read afresh, not after the held one's */
        ctx->inspected = NULL;

        if (r->header_only || r->headers_out.content_length_n == 0) {

            if (ngx_http_sf_oauth_dead(r, ctx, 1, NULL)
                == NGX_HTTP_SF_OAUTH_BAYEUX_REPLAY)
            {
                /* swallowed: nothing of this response goes further */
                return ngx_http_sf_oauth_wait_hold(r, ctx);
            }

            return ngx_http_sf_oauth_pass(r, ctx);
        }

        /* its body tells: see ngx_http_sf_oauth_inspect */

        ctx->inspecting = 1;
        r->buffered |= NGX_HTTP_SF_OAUTH_BUFFERED;

        return NGX_OK;
    }

    ngx_http_sf_oauth_handler_response_header(r, ctx);

    return ngx_http_next_header_filter(r);
}


/*
 * Whether this response may say the session is dead.  A CometD 200 may,
 * only when its request was a /meta/handshake or /meta/connect and it is
 * not announced longer than NGX_HTTP_SF_OAUTH_BAYEUX_MAX: an answer that
 * delivers events passes at once, unread.
 */

static ngx_int_t
ngx_http_sf_oauth_candidate(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    ctx->bayeux = NGX_HTTP_SF_OAUTH_BAYEUX_NONE;

    if (!ngx_http_sf_oauth_verdict_candidate(ctx->kind,
                                             r->headers_out.status))
    {
        return 0;
    }

    if (r->headers_out.status != NGX_HTTP_OK) {
        return 1;
    }

    if (r->headers_out.content_length_n > NGX_HTTP_SF_OAUTH_BAYEUX_MAX) {
        return 0;
    }

    ctx->bayeux = ngx_http_sf_oauth_bayeux_request(r);

    return ctx->bayeux != NGX_HTTP_SF_OAUTH_BAYEUX_NONE;
}


/* whether this response is to be replayed, and why not if not */

static ngx_int_t
ngx_http_sf_oauth_replayable(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    if (ctx->replayed && !ngx_http_sf_oauth_wait_is_stale_replay(ctx)) {
        /*
         * The replay's own answer passes: one replay after a refresh made
         * for the request
         */
        return 0;
    }

    if (r->request_body_no_buffering) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "sf_oauth: credential \"%V\": upstream %ui passed "
                      "through, not replayed: the request body was streamed "
                      "(proxy_request_buffering off) and is gone",
                      &ctx->cred->name, r->headers_out.status);
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

    if (ctx == NULL) {
        return ngx_http_next_body_filter(r, in);
    }

    if (ctx->inspecting) {
        return ngx_http_sf_oauth_inspect(r, ctx, in);
    }

    if (!ctx->held) {

        if (ctx->kind == NGX_HTTP_SF_OAUTH_GRPC) {
            /* a gRPC stream's trailers come with its last buffer */

            for (cl = in; cl; cl = cl->next) {
                if (cl->buf->last_buf) {
                    ngx_http_sf_oauth_handler_grpc_trailers(r, ctx);
                    break;
                }
            }
        }

        return ngx_http_next_body_filter(r, in);
    }

    /* the swallowed response's body: consumed, so the upstream drains it */

    last = 0;

    for (cl = in; cl; cl = cl->next) {
        if (cl->buf->last_buf) {
            last = 1;
        }
    }

    ngx_http_sf_oauth_consume(in);

    if (last) {
        /* the upstream finalizes the request now: parked, then woken */
        ngx_http_sf_oauth_timer_post(&ctx->waiter.event);
    }

    return NGX_OK;
}


/*
 * The body of a candidate response, read into a buffer of the module's
 * and consumed, up to NGX_HTTP_SF_OAUTH_INSPECT_MAX bytes, its end, or a
 * part in a temp file (a big response: not a session's fault).  Then the
 * verdict: a dead session is held like a 401 always was; any other
 * response goes on, its header first, then what was read, byte for byte,
 * then the rest as it comes.
 */

static ngx_int_t
ngx_http_sf_oauth_inspect(ngx_http_request_t *r, ngx_http_sf_oauth_ctx_t *ctx,
    ngx_chain_t *in)
{
    off_t         len, max;
    size_t        n, prior;
    ngx_int_t     rc;
    ngx_str_t     rewritten;
    ngx_buf_t    *b, *copy;
    ngx_uint_t    last, full;
    ngx_chain_t  *cl, *out;

    b = ctx->inspected;

    if (b == NULL) {
        len = r->headers_out.content_length_n;
        max = ctx->bayeux ? NGX_HTTP_SF_OAUTH_BAYEUX_MAX
                          : NGX_HTTP_SF_OAUTH_INSPECT_MAX;

        if (len <= 0 || len > max) {
            len = max;
        }

        b = ngx_create_temp_buf(r->pool, (size_t) len);
        if (b == NULL) {
            return NGX_ERROR;
        }

        ctx->inspected = b;
    }

    prior = b->last - b->pos;
    last = 0;
    full = 0;

    for (cl = in; cl; cl = cl->next) {

        if (cl->buf->last_buf) {
            last = 1;
        }

        if (!ngx_buf_in_memory(cl->buf)) {
            if (ngx_buf_size(cl->buf)) {
                full = 1;
            }

            continue;
        }

        n = cl->buf->last - cl->buf->pos;

        if (n > (size_t) (b->end - b->last)) {
            n = b->end - b->last;
            full = 1;
        }

        b->last = ngx_cpymem(b->last, cl->buf->pos, n);
    }

    if (!last && !full && r->upstream && r->upstream->cleanup) {
        ngx_http_sf_oauth_consume(in);
        return NGX_OK;
    }

    /*
     * Here the body is read to its end, or to the limit, or the upstream
     * is being finalized without its end (it closed early: nginx sends a
     * flush, then finalizes the request): what was read is all there is.
     */

    rc = ngx_http_sf_oauth_dead(r, ctx, last && !full, &rewritten);

    if (rc == NGX_HTTP_SF_OAUTH_BAYEUX_RECONNECT) {
        return ngx_http_sf_oauth_reconnect(r, ctx, in, &rewritten);
    }

    if (rc == NGX_HTTP_SF_OAUTH_BAYEUX_REPLAY) {

        if (ngx_http_sf_oauth_wait_hold(r, ctx) != NGX_OK) {
            return NGX_ERROR;
        }

        /* the rest of it is drained as a held response's */
        return ngx_http_sf_oauth_body_filter(r, in);
    }

    rc = ngx_http_sf_oauth_pass(r, ctx);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        ngx_http_sf_oauth_consume(in);
        return (rc > NGX_OK) ? NGX_ERROR : rc;
    }

    out = in;

    if (prior) {
        copy = ngx_calloc_buf(r->pool);
        if (copy == NULL) {
            return NGX_ERROR;
        }

        copy->pos = b->pos;
        copy->last = b->pos + prior;
        copy->temporary = 1;

        out = ngx_alloc_chain_link(r->pool);
        if (out == NULL) {
            return NGX_ERROR;
        }

        out->buf = copy;
        out->next = in;
    }

    return ngx_http_next_body_filter(r, out);
}


/*
 * Whether the response held so far says that the session is dead:
 * NGX_HTTP_SF_OAUTH_BAYEUX_REPLAY (a dead session: hold and replay),
 * _RECONNECT (a CometD connect's: "rewritten" is the body to send
 * instead, its header set for it), or _PASS.
 */

static ngx_int_t
ngx_http_sf_oauth_dead(ngx_http_request_t *r, ngx_http_sf_oauth_ctx_t *ctx,
    ngx_uint_t whole, ngx_str_t *rewritten)
{
    size_t            len;
    u_char           *body;
    ngx_int_t         dead, rc;
    ngx_uint_t        inflated;
    ngx_table_elt_t  *ce;

    ctx->inspecting = 0;

    body = ctx->inspected ? ctx->inspected->pos : NULL;
    len = ctx->inspected ? ctx->inspected->last - ctx->inspected->pos : 0;

    ce = r->headers_out.content_encoding;
    inflated = 0;

    if (len && ce && ce->hash
        && ((ce->value.len == 4
             && ngx_strncasecmp(ce->value.data, (u_char *) "gzip", 4) == 0)
            || (ce->value.len == 6
                && ngx_strncasecmp(ce->value.data, (u_char *) "x-gzip", 6)
                   == 0)))
    {
        rc = ngx_http_sf_oauth_inflate_response(r->pool, &body, &len, &whole);

        if (rc == NGX_ERROR) {
            return 0;
        }

        if (rc == NGX_DECLINED) {
            /* not gzip after all: not Salesforce's answer about a session */
            whole = 0;
            len = 0;
        }

        inflated = 1;
    }

    if (ctx->bayeux && rewritten) {
        dead = ngx_http_sf_oauth_bayeux_verdict(r->pool, ctx->bayeux, body,
                                                len, whole, rewritten);

        if (dead == NGX_HTTP_SF_OAUTH_BAYEUX_RECONNECT) {
            /* the rewritten body goes as it is, with its own length */

            r->headers_out.content_length_n = rewritten->len;

            if (r->headers_out.content_length) {
                r->headers_out.content_length->hash = 0;
                r->headers_out.content_length = NULL;
            }

            if (inflated) {
                ce->hash = 0;
                r->headers_out.content_encoding = NULL;
            }
        }

    } else if (ctx->bayeux) {
        /* no body: no Bayeux message */
        dead = NGX_HTTP_SF_OAUTH_BAYEUX_PASS;

    } else {
        dead = ngx_http_sf_oauth_verdict(ctx->kind, r->headers_out.status,
                                         body, len, whole)
               ? NGX_HTTP_SF_OAUTH_BAYEUX_REPLAY
               : NGX_HTTP_SF_OAUTH_BAYEUX_PASS;
    }

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "sf_oauth: upstream %ui, %uz bytes%s read: %s",
                   r->headers_out.status, len, whole ? "" : " (not all)",
                   dead ? "dead session" : "passed");

    return dead;
}


/*
 * A CometD connect that says the session is dead: the token is dropped
 * (ngx_http_sf_oauth_wait_reconnect), and the client gets the answer with
 * its advice rewritten, whole, in place of what Salesforce sent.
 */

static ngx_int_t
ngx_http_sf_oauth_reconnect(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_chain_t *in, ngx_str_t *rewritten)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t  *out;

    ngx_http_sf_oauth_wait_reconnect(r, ctx);

    /* read already, and sent as the rewritten body */
    ngx_http_sf_oauth_consume(in);

    rc = ngx_http_sf_oauth_pass(r, ctx);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return (rc > NGX_OK) ? NGX_ERROR : rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = rewritten->data;
    b->last = rewritten->data + rewritten->len;
    b->temporary = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    out = ngx_alloc_chain_link(r->pool);
    if (out == NULL) {
        return NGX_ERROR;
    }

    out->buf = b;
    out->next = NULL;

    return ngx_http_next_body_filter(r, out);
}


/* a held response that is not about the session goes on after all */

static ngx_int_t
ngx_http_sf_oauth_pass(ngx_http_request_t *r, ngx_http_sf_oauth_ctx_t *ctx)
{
    r->buffered &= ~NGX_HTTP_SF_OAUTH_BUFFERED;

    if (r->headers_out.status == NGX_HTTP_UNAUTHORIZED) {
        /* the token is not dead: it stays */
        ctx->noted = 1;

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "sf_oauth: credential \"%V\": upstream 401 passed "
                      "through without a refresh: Salesforce says the "
                      "session is not valid for use with the REST API (a "
                      "high-assurance session level or an IP restriction in "
                      "the connected app's or profile's session settings)",
                      &ctx->cred->name);
    }

    ngx_http_sf_oauth_handler_response_header(r, ctx);

    return ngx_http_next_header_filter(r);
}


/* marks every buffer of "in" sent */

static void
ngx_http_sf_oauth_consume(ngx_chain_t *in)
{
    ngx_chain_t  *cl;

    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;

        if (cl->buf->in_file) {
            cl->buf->file_pos = cl->buf->file_last;
        }
    }
}
