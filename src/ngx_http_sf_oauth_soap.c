
/*
 * The SOAP request side: a SOAP request's envelope is read whole before
 * the proxy's handler runs, inflated a slice at a time if it came
 * gzip-compressed, and parsed; then it is proxied with the token put in
 * (ngx_http_sf_oauth_inject.c), refused with a SOAP fault, or, with
 * sf_oauth_soap_login, a login() or logout() is answered by the module.
 * Parsing, inflating and writing the envelopes are
 * ngx_http_sf_oauth_envelope.c's.
 */


#include "ngx_http_sf_oauth.h"


static void ngx_http_sf_oauth_take_body(ngx_http_request_t *r);
static void ngx_http_sf_oauth_resume_inflation(ngx_event_t *ev);
static void ngx_http_sf_oauth_run_inflation(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static void ngx_http_sf_oauth_plan_envelope(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_chain_t *plain);
static void ngx_http_sf_oauth_refuse_envelope(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_uint_t status, ngx_str_t *why);
static ngx_int_t ngx_http_sf_oauth_intercept_login(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_http_sf_oauth_envelope_t *env);
static void ngx_http_sf_oauth_poll_identity(ngx_event_t *ev);
static ngx_int_t ngx_http_sf_oauth_reply_to_login(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);


/*
 * A SOAP request: its body is read before the proxy's handler runs, so
 * that the envelope can be parsed and the token put into it.  A body that
 * the proxy would stream (proxy_request_buffering off) cannot be: it is
 * gone before the token could go in.
 */

ngx_int_t
ngx_http_sf_oauth_soap_read_envelope(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_int_t                  rc;
    ngx_table_elt_t           *h;
    ngx_http_upstream_conf_t  *ucf;

    static ngx_str_t  streamed = ngx_string(
        "the SOAP envelope cannot get the session: "
        "proxy_request_buffering is off in this location");
    static ngx_str_t  encoded = ngx_string(
        "the SOAP envelope's Content-Encoding is not supported: "
        "send it uncompressed or gzip-compressed");

    /* ngx_http_proxy_loc_conf_t starts with its ngx_http_upstream_conf_t */
    ucf = ngx_http_get_module_loc_conf(r, ngx_http_proxy_module);

    if (!ucf->request_buffering) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "sf_oauth: credential \"%V\": %V: turn it on where "
                      "SOAP requests go", &ctx->cred->name, &streamed);

        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_sf_oauth_answer_fault(r,
                                   NGX_HTTP_INTERNAL_SERVER_ERROR, &streamed);
    }

    h = ngx_http_sf_oauth_inject_find_encoding(r);

    ctx->gzipped = (h != NULL);

    if (h
        && !(h->value.len == 4
             && ngx_strncasecmp(h->value.data, (u_char *) "gzip", 4) == 0)
        && !(h->value.len == 6
             && ngx_strncasecmp(h->value.data, (u_char *) "x-gzip", 6) == 0))
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "sf_oauth: credential \"%V\": SOAP envelope refused: "
                      "%V", &ctx->cred->name, &encoded);

        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_sf_oauth_answer_fault(r, NGX_HTTP_BAD_REQUEST,
                                              &encoded);
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_sf_oauth_take_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/* the SOAP request's body is read: its envelope is parsed, then proxied */

static void
ngx_http_sf_oauth_take_body(ngx_http_request_t *r)
{
    ngx_chain_t              *body;
    ngx_http_sf_oauth_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_sf_oauth_module);

    if (ctx == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    body = r->request_body ? r->request_body->bufs : NULL;

    if (!ctx->gzipped) {
        ngx_http_sf_oauth_plan_envelope(r, ctx, body);
        return;
    }

    /*
     * A gzip-compressed envelope is inflated first, a slice at a time:
     * the request keeps the reference that reading the body took until it
     * is finalized with the envelope's answer.
     */

    ctx->inflate = ngx_http_sf_oauth_inflate_start_envelope(r, body);
    if (ctx->inflate == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ctx->inflating.handler = ngx_http_sf_oauth_resume_inflation;
    ctx->inflating.data = r->connection;
    ctx->inflating.log = r->connection->log;

    /* a client that goes away meanwhile is noticed and finalized */
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;

    ngx_http_sf_oauth_run_inflation(r, ctx);
}


/* the next slice of the envelope's inflation, on a later turn */

static void
ngx_http_sf_oauth_resume_inflation(ngx_event_t *ev)
{
    ngx_connection_t         *c;
    ngx_http_request_t       *r;
    ngx_http_sf_oauth_ctx_t  *ctx;

    ctx = (ngx_http_sf_oauth_ctx_t *)
              ((u_char *) ev - offsetof(ngx_http_sf_oauth_ctx_t, inflating));
    r = ctx->request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    /* posted, or its timer fired: either way, the next slice */
    ev->timedout = 0;

    ngx_http_sf_oauth_run_inflation(r, ctx);
    ngx_http_run_posted_requests(c);
}


/*
 * One slice of the inflation; then the next is posted after the events
 * that are ready now (ngx_posted_next_events): the other requests of the
 * worker run between two slices.
 */

static void
ngx_http_sf_oauth_run_inflation(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_int_t                  rc;
    ngx_str_t                  why;
    ngx_uint_t                 status;
    ngx_chain_t               *plain;
    ngx_http_core_loc_conf_t  *clcf;

    plain = NULL;

    rc = ngx_http_sf_oauth_inflate_envelope(ctx->inflate, &plain, &status,
                                            &why);

    if (rc == NGX_AGAIN) {
        ngx_post_event(&ctx->inflating, &ngx_posted_next_events);

        /*
         * A posted event does not keep a worker that shuts down
         * gracefully (nginx -s quit, a reload): a timer does
         * (ngx_event_no_timers_left), so the envelope is answered before
         * the worker exits.  It fires only if the slices stalled, and
         * then runs one.
         */

        if (!ctx->inflating.timer_set) {
            clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
            ngx_add_timer(&ctx->inflating, clcf->client_body_timeout);
        }

        return;
    }

    if (ctx->inflating.timer_set) {
        ngx_del_timer(&ctx->inflating);
    }

    /* a slice run by the timer may end it while the event is posted */
    if (ctx->inflating.posted) {
        ngx_delete_posted_event(&ctx->inflating);
    }

    ctx->inflate = NULL;
    r->read_event_handler = ngx_http_block_reading;

    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (rc == NGX_DECLINED) {
        ngx_http_sf_oauth_refuse_envelope(r, ctx, status, &why);
        return;
    }

    ngx_http_sf_oauth_plan_envelope(r, ctx, plain);
}


/* the envelope, inflated if it came compressed, is parsed, then proxied */

static void
ngx_http_sf_oauth_plan_envelope(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_chain_t *plain)
{
    ngx_int_t                      rc;
    ngx_str_t                      ns, why;
    ngx_http_sf_oauth_loc_conf_t  *slcf;
    ngx_http_sf_oauth_envelope_t  *env;

    env = ngx_palloc(r->pool, sizeof(ngx_http_sf_oauth_envelope_t));
    if (env == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_http_sf_oauth_envelope_namespace(r, &ns);

    rc = ngx_http_sf_oauth_envelope_parse(r->pool, plain, &ns, env, &why);

    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (rc == NGX_DECLINED) {
        ngx_http_sf_oauth_refuse_envelope(r, ctx, NGX_HTTP_BAD_REQUEST, &why);
        return;
    }

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_sf_oauth_module);

    if (env->call == NGX_HTTP_SF_OAUTH_CALL_UNKNOWN) {

        if (slcf->soap_login) {
            /*
             * it may be a login(), whose password must not go to
             * Salesforce: what cannot be told is refused
             */

            ngx_str_set(&why, "the call in the SOAP Body does not start "
                        "within the envelope's first 64 KiB, and this "
                        "location answers login() itself "
                        "(sf_oauth_soap_login): a call that cannot be told "
                        "from login() is not forwarded; send the call "
                        "without the comments or whitespace before it");

            ngx_http_sf_oauth_refuse_envelope(r, ctx, NGX_HTTP_BAD_REQUEST,
                                              &why);
            return;
        }

        /* without sf_oauth_soap_login, any call goes to Salesforce */
        env->call = NGX_HTTP_SF_OAUTH_CALL_OTHER;
    }

    if (env->call != NGX_HTTP_SF_OAUTH_CALL_OTHER && slcf->soap_login) {
        ngx_http_finalize_request(r,
                              ngx_http_sf_oauth_intercept_login(r, ctx, env));
        return;
    }

    ctx->envelope = env;
    ctx->client_body = r->request_body ? r->request_body->bufs : NULL;
    ctx->client_length = r->headers_in.content_length_n;

    /*
     * The content phase goes on where it stopped: the location's content
     * handler is ngx_http_sf_oauth_handler_content (see
     * ngx_http_sf_oauth_merge_loc_conf), which the replay runs the same way.
     */

    ngx_http_finalize_request(r, r->content_handler(r));
}


/* an envelope read whole but refused: an info line, and the SOAP fault */

static void
ngx_http_sf_oauth_refuse_envelope(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_uint_t status, ngx_str_t *why)
{
    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "sf_oauth: credential \"%V\": SOAP envelope refused: %V",
                  &ctx->cred->name, why);

    ngx_http_finalize_request(r,
                              ngx_http_sf_oauth_answer_fault(r, status, why));
}


/*
 * login() or logout() answered here (sf_oauth_soap_login on).  The ids
 * come from the token answer; the user's names from the identity service,
 * read once: a login() waits for that read, at most the credential's
 * timeout, then answers with what is known.
 */

static ngx_int_t
ngx_http_sf_oauth_intercept_login(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_http_sf_oauth_envelope_t *env)
{
    ngx_str_t                  token;
    ngx_http_sf_oauth_who_t    who;
    ngx_http_sf_oauth_cred_t  *cred;

    cred = ctx->cred;
    ctx->envelope = env;

    if (env->call != NGX_HTTP_SF_OAUTH_CALL_LOGIN) {
        return ngx_http_sf_oauth_reply_to_login(r, ctx);
    }

    if (ngx_http_sf_oauth_store_identity(cred, r->pool, &who) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (who.known || who.org_id.len == 0) {
        return ngx_http_sf_oauth_reply_to_login(r, ctx);
    }

    if (cred->rt.identity == NULL
        && (cred->rt.identity_tried == 0
            || ngx_current_msec - cred->rt.identity_tried
               >= NGX_HTTP_SF_OAUTH_IDENTITY_RETRY))
    {
        token.data = ctx->authorization.data + sizeof("Bearer ") - 1;
        token.len = ctx->authorization.len - (sizeof("Bearer ") - 1);

        (void) ngx_http_sf_oauth_refresh_identity(cred, &who.org_id,
                                                 &who.user_id, &token);
    }

    if (cred->rt.identity == NULL) {
        return ngx_http_sf_oauth_reply_to_login(r, ctx);
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "sf_oauth: credential \"%V\": login() waits for the "
                   "identity service", &cred->name);

    ctx->waiter.event.handler = ngx_http_sf_oauth_poll_identity;
    ctx->waiter.event.data = r->connection;
    ctx->waiter.event.log = r->connection->log;
    ctx->deadline = ngx_current_msec + cred->timeout;

    ngx_add_timer(&ctx->waiter.event, NGX_HTTP_SF_OAUTH_POLL_MAX);

    /* a client that goes away while waiting is noticed and finalized */
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;

    r->main->count++;

    return NGX_DONE;
}


static void
ngx_http_sf_oauth_poll_identity(ngx_event_t *ev)
{
    ngx_connection_t         *c;
    ngx_http_request_t       *r;
    ngx_http_sf_oauth_ctx_t  *ctx;

    ctx = (ngx_http_sf_oauth_ctx_t *)
              ((u_char *) ev - offsetof(ngx_http_sf_oauth_ctx_t, waiter.event));
    r = ctx->request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    if (ctx->cred->rt.identity
        && (ngx_msec_int_t) (ctx->deadline - ngx_current_msec) > 0)
    {
        ngx_add_timer(ev, NGX_HTTP_SF_OAUTH_POLL_MAX);
        return;
    }

    r->read_event_handler = ngx_http_block_reading;

    ngx_http_finalize_request(r, ngx_http_sf_oauth_reply_to_login(r, ctx));
    ngx_http_run_posted_requests(c);
}


/* the answer to login() or logout(), with what is known of the user */

static ngx_int_t
ngx_http_sf_oauth_reply_to_login(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    u_char                        *last;
    ngx_str_t                     *url;
    ngx_uint_t                     sandbox;
    ngx_http_sf_oauth_who_t        who;
    ngx_http_sf_oauth_envelope_t  *env;

    static ngx_str_t  unknown = ngx_string(
        "login() cannot be answered: the token endpoint's answer had no "
        "usable \"id\" (the identity URL with the org and user ids)");

    env = ctx->envelope;

    if (ngx_http_sf_oauth_store_identity(ctx->cred, r->pool, &who)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (env->call == NGX_HTTP_SF_OAUTH_CALL_LOGIN && who.org_id.len == 0) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "sf_oauth: credential \"%V\": %V", &ctx->cred->name,
                      &unknown);

        return ngx_http_sf_oauth_answer_fault(r,
                                   NGX_HTTP_INTERNAL_SERVER_ERROR, &unknown);
    }

    url = &ctx->cred->token_url;
    last = url->data + url->len;

    sandbox = ngx_strlcasestrn(url->data, last,
                               (u_char *) "//test.salesforce.com",
                               sizeof("//test.salesforce.com") - 1 - 1)
              || ngx_strlcasestrn(url->data, last,
                                  (u_char *) ".sandbox.my.salesforce.com",
                                  sizeof(".sandbox.my.salesforce.com") - 1
                                  - 1);

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "sf_oauth: credential \"%V\": SOAP %s() answered by the "
                  "module (sf_oauth_soap_login)", &ctx->cred->name,
                  env->call == NGX_HTTP_SF_OAUTH_CALL_LOGIN
                  ? "login" : "logout");

    return ngx_http_sf_oauth_answer_login(r, env, &who, sandbox);
}
