
/*
 * Request handling: put the cached token on the request, or suspend the
 * request until a refresh gives one, or answer 502 with what failed.
 *
 * The handler runs in the precontent phase, after access control: a
 * request that auth_basic, auth_request or allow/deny turn away never
 * costs a token request, and an auth_request subrequest never carries the
 * Salesforce token.
 *
 * Only a request that goes to an upstream needs a token: one whose
 * location has a content handler (proxy_pass and the like).  Static
 * files, "return", try_files and sf_oauth_info are never gated.
 *
 * A waiting request is suspended without blocking the worker.  It is woken
 * by an event: at once when this worker's own token request completes, or
 * by a short timer (5 ms, backing off to 50 ms) that re-reads the zone
 * while another worker refreshes.  Each waiter has a deadline.
 *
 * Where the token goes (the rule: only on the upstream request of an
 * sf_oauth location, and in $sf_oauth_token):
 *
 *   - The precontent handler only looks the token up.  It is put into
 *     the Authorization header by this module's content handler, which
 *     wraps the location's own (the proxy's), and taken out again as soon
 *     as the upstream request is built.  So try_files, mirror, an
 *     internal redirect or an auth_request never see it in the header.
 *   - A mirror subrequest shares the elements of the main request's
 *     header list: when a subrequest exists, the main request gets a
 *     list of its own before the token goes in.
 *   - If the upstream request is built later (a body still to read, a
 *     cache lock), the token is taken out when the response header comes,
 *     before an internal redirect runs the next location, and in the log
 *     phase, whichever comes first.
 *   - $http_authorization is this module's variable: it always shows the
 *     client's own header, never the token, so nothing that evaluates it
 *     (proxy_set_header, a cache key, add_header, a log) can copy it.
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
static ngx_http_sf_oauth_ctx_t *ngx_http_sf_oauth_create_ctx(
    ngx_http_request_t *r, ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_lookup_t *lk, ngx_int_t *rc);
static ngx_int_t ngx_http_sf_oauth_unmapped(ngx_http_request_t *r,
    ngx_http_sf_oauth_loc_conf_t *slcf);
static ngx_int_t ngx_http_sf_oauth_clone(ngx_http_request_t *r,
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_ctx_t **cp);
static void ngx_http_sf_oauth_held_writer(ngx_http_request_t *r);
static ngx_int_t ngx_http_sf_oauth_set_token(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static ngx_table_elt_t *ngx_http_sf_oauth_set_header(ngx_http_request_t *r,
    ngx_http_sf_oauth_slot_t *slot, ngx_table_elt_t *h, ngx_str_t *key,
    u_char *lowcase_key, ngx_str_t *value);
static ngx_int_t ngx_http_sf_oauth_set_envelope(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *token);
static void ngx_http_sf_oauth_unset_header(ngx_http_request_t *r,
    ngx_http_sf_oauth_slot_t *slot);
static ngx_int_t ngx_http_sf_oauth_read_envelope(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static void ngx_http_sf_oauth_body_read(ngx_http_request_t *r);
static void ngx_http_sf_oauth_inflate_turn(ngx_event_t *ev);
static void ngx_http_sf_oauth_body_inflate(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static void ngx_http_sf_oauth_body_parse(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_chain_t *plain);
static void ngx_http_sf_oauth_refuse_envelope(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_uint_t status, ngx_str_t *why);
static ngx_table_elt_t *ngx_http_sf_oauth_encoding(ngx_http_request_t *r);
static ngx_int_t ngx_http_sf_oauth_request_body_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_sf_oauth_soap_login(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_http_sf_oauth_envelope_t *env);
static void ngx_http_sf_oauth_login_wait(ngx_event_t *ev);
static ngx_int_t ngx_http_sf_oauth_soap_answer(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static ngx_int_t ngx_http_sf_oauth_unshare(ngx_http_request_t *r);
static void ngx_http_sf_oauth_note_401(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static void ngx_http_sf_oauth_end_upstream(ngx_http_request_t *r);
static ngx_int_t ngx_http_sf_oauth_fail_request(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *error, time_t retry_after);
static ngx_int_t ngx_http_sf_oauth_send_error(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *error, time_t retry_after);


static ngx_str_t  ngx_http_sf_oauth_error_start =
    ngx_string("the token request could not be started");
static ngx_str_t  ngx_http_sf_oauth_error_timeout =
    ngx_string("timed out waiting for the token refresh");
static ngx_str_t  ngx_http_sf_oauth_error_clone =
    ngx_string("no token yet for a background subrequest");
static ngx_str_t  ngx_http_sf_oauth_error_unknown =
    ngx_string("the request names no configured credential");
static ngx_str_t  ngx_http_sf_oauth_nomap =
    ngx_string("no credential is mapped for this request, and SOAP calls "
               "here may carry a login() password: not sent");


/*
 * The credential of a request: the location's, or the one its
 * "sf_oauth $variable" names, found in the names hash.  *cred is NULL for
 * none (sf_oauth off, or an empty value: no token).  A value that names
 * no credential is NGX_DECLINED, and with "log" an error line, the value
 * cut and escaped.
 */

ngx_int_t
ngx_http_sf_oauth_handler_cred(ngx_http_request_t *r,
    ngx_http_sf_oauth_cred_t **cred, ngx_uint_t log)
{
    u_char                         *p, *last, c;
    u_char                          buf[NGX_HTTP_SF_OAUTH_NAME_MAX * 4];
    ngx_str_t                       name;
    ngx_uint_t                      i;
    ngx_http_sf_oauth_ctx_t        *ctx;
    ngx_http_sf_oauth_loc_conf_t   *slcf;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_sf_oauth_module);

    if (ctx) {
        *cred = ctx->cred;
        return NGX_OK;
    }

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_sf_oauth_module);

    if (slcf->value == NULL) {
        *cred = slcf->cred;
        return NGX_OK;
    }

    *cred = NULL;

    if (ngx_http_complex_value(r, slcf->value, &name) != NGX_OK) {
        return NGX_ERROR;
    }

    if (name.len == 0) {
        return NGX_OK;
    }

    smcf = ngx_http_get_module_main_conf(r, ngx_http_sf_oauth_module);

    *cred = ngx_http_sf_oauth_credential_find(smcf, &name);

    if (*cred) {
        return NGX_OK;
    }

    if (log) {
        p = buf;
        last = buf + sizeof(buf);

        for (i = 0; i < name.len && i < NGX_HTTP_SF_OAUTH_NAME_MAX; i++) {
            c = name.data[i];

            if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
                *p++ = c;

            } else {
                p = ngx_slprintf(p, last, "\\x%02xd", c);
            }
        }

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "sf_oauth: no credential named \"%*s\"%s, from "
                      "\"sf_oauth %V\": map the request to a configured "
                      "sf_oauth_credential, or to \"\" for no token",
                      p - buf, buf,
                      name.len > NGX_HTTP_SF_OAUTH_NAME_MAX ? "..." : "",
                      &slcf->name);
    }

    return NGX_DECLINED;
}


ngx_int_t
ngx_http_sf_oauth_handler(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_http_sf_oauth_cred_t      *cred;
    ngx_http_sf_oauth_ctx_t       *ctx;
    ngx_http_sf_oauth_lookup_t     lk;
    ngx_http_sf_oauth_loc_conf_t  *slcf;

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_sf_oauth_module);

    if (slcf->handler == NULL) {
        /* no upstream: a static file, try_files, the status output */
        return NGX_DECLINED;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_sf_oauth_module);

    if (ctx == NULL) {

        rc = ngx_http_sf_oauth_handler_cred(r, &cred, 1);

        if (rc == NGX_DECLINED) {
            return ngx_http_sf_oauth_fail_request(r, NULL,
                                              &ngx_http_sf_oauth_error_unknown,
                                              0);
        }

        if (rc != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (cred == NULL) {
            /* sf_oauth off, or a variable that names no credential */
            return NGX_DECLINED;
        }

        ctx = ngx_http_sf_oauth_create_ctx(r, cred, &lk, &rc);
        if (ctx == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        rc = ngx_http_sf_oauth_act(r, ctx, rc, &lk);

    } else if (ctx->waiting) {
        return NGX_AGAIN;

    } else if (ctx->authorization.len) {
        /* resumed after a wait, the token is known */
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
 * The content handler of every location with sf_oauth and a content
 * handler of its own (the proxy's), which it wraps: see
 * ngx_http_sf_oauth_merge_loc_conf.  The token goes into the
 * Authorization header, the proxy's handler builds the upstream request
 * from it, and the token comes out again.
 */

ngx_int_t
ngx_http_sf_oauth_handler_content(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_str_t                      token;
    ngx_http_sf_oauth_cred_t      *cred;
    ngx_http_sf_oauth_ctx_t       *ctx;
    ngx_http_sf_oauth_loc_conf_t  *slcf;

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_sf_oauth_module);

    if (slcf->handler == NULL) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "sf_oauth: no content handler to run");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_sf_oauth_module);

    if (ctx == NULL) {

        rc = ngx_http_sf_oauth_handler_cred(r, &cred, r != r->main);

        if (rc == NGX_DECLINED) {
            return ngx_http_sf_oauth_send_error(r, NULL,
                                              &ngx_http_sf_oauth_error_unknown,
                                              0);
        }

        if (rc != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (cred == NULL) {
            return ngx_http_sf_oauth_unmapped(r, slcf);
        }

        /*
         * A clone subrequest (slice, proxy_cache_background_update)
         * starts in the content phase: it looks the token up here.
         */

        rc = ngx_http_sf_oauth_clone(r, cred, &ctx);
        if (ctx == NULL) {
            return rc;
        }
    }

    if (ctx->authorization.len == 0) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "sf_oauth: content handler without a token");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (!ctx->kind_known) {
        ctx->kind = ngx_http_sf_oauth_envelope_kind(r);
        ctx->kind_known = 1;
    }

    if (ctx->kind == NGX_HTTP_SF_OAUTH_SOAP
        && ctx->envelope == NULL
        && r == r->main
        && r->method == NGX_HTTP_POST)
    {
        /* the envelope is read and parsed first; then this runs again */
        return ngx_http_sf_oauth_read_envelope(r, ctx);
    }

    /* nginx dumps the upstream request header at debug level */
    token.data = ctx->authorization.data + sizeof("Bearer ") - 1;
    token.len = ctx->authorization.len - (sizeof("Bearer ") - 1);

    ngx_http_sf_oauth_redact_install(r, ctx->cred, ctx->generation, &token);

    if (ngx_http_sf_oauth_set_token(r, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = slcf->handler(r);

    /*
     * The request is still ours: the content phase and the replay both
     * finalize it with rc only after this returns.
     */

    ctx->upstream = r->upstream;
    ctx->noted = 0;

    if (r->upstream && r->upstream->request_bufs) {
        ngx_http_sf_oauth_handler_unset_token(r, ctx);
    }

    return rc;
}


/*
 * A SOAP request: its body is read before the proxy's handler runs, so
 * that the envelope can be parsed and the token put into it.  A body that
 * the proxy would stream (proxy_request_buffering off) cannot be: it is
 * gone before the token could go in.
 */

static ngx_int_t
ngx_http_sf_oauth_read_envelope(ngx_http_request_t *r,
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

        return ngx_http_sf_oauth_envelope_fault(r,
                                   NGX_HTTP_INTERNAL_SERVER_ERROR, &streamed);
    }

    h = ngx_http_sf_oauth_encoding(r);

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

        return ngx_http_sf_oauth_envelope_fault(r, NGX_HTTP_BAD_REQUEST,
                                                &encoded);
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_sf_oauth_body_read);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/* the request's Content-Encoding, unless it is "identity" */

static ngx_table_elt_t *
ngx_http_sf_oauth_encoding(ngx_http_request_t *r)
{
    ngx_list_t       *in;
    ngx_table_elt_t  *h;

    static ngx_str_t  name = ngx_string("Content-Encoding");

    in = &r->headers_in.headers;

    for (h = ngx_http_sf_oauth_handler_find(in, &name, NULL);
         h;
         h = ngx_http_sf_oauth_handler_find(in, &name, h))
    {
        if (!(h->value.len == sizeof("identity") - 1
              && ngx_strncasecmp(h->value.data, (u_char *) "identity",
                                 sizeof("identity") - 1)
                 == 0))
        {
            return h;
        }
    }

    return NULL;
}


/* the SOAP request's body is read: its envelope is parsed, then proxied */

static void
ngx_http_sf_oauth_body_read(ngx_http_request_t *r)
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
        ngx_http_sf_oauth_body_parse(r, ctx, body);
        return;
    }

    /*
     * A gzip-compressed envelope is inflated first, a slice at a time:
     * the request keeps the reference that reading the body took until it
     * is finalized with the envelope's answer.
     */

    ctx->inflate = ngx_http_sf_oauth_envelope_inflate_start(r, body);
    if (ctx->inflate == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ctx->inflating.handler = ngx_http_sf_oauth_inflate_turn;
    ctx->inflating.data = r->connection;
    ctx->inflating.log = r->connection->log;

    /* a client that goes away meanwhile is noticed and finalized */
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;

    ngx_http_sf_oauth_body_inflate(r, ctx);
}


/* the next slice of the envelope's inflation, on a later turn */

static void
ngx_http_sf_oauth_inflate_turn(ngx_event_t *ev)
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

    ngx_http_sf_oauth_body_inflate(r, ctx);
    ngx_http_run_posted_requests(c);
}


/*
 * One slice of the inflation; then the next is posted after the events
 * that are ready now (ngx_posted_next_events): the other requests of the
 * worker run between two slices.
 */

static void
ngx_http_sf_oauth_body_inflate(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_int_t                  rc;
    ngx_str_t                  why;
    ngx_uint_t                 status;
    ngx_chain_t               *plain;
    ngx_http_core_loc_conf_t  *clcf;

    plain = NULL;

    rc = ngx_http_sf_oauth_envelope_inflate(ctx->inflate, &plain, &status,
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

    ngx_http_sf_oauth_body_parse(r, ctx, plain);
}


/* the envelope, inflated if it came compressed, is parsed, then proxied */

static void
ngx_http_sf_oauth_body_parse(ngx_http_request_t *r,
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
        ngx_http_finalize_request(r, ngx_http_sf_oauth_soap_login(r, ctx, env));
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
                              ngx_http_sf_oauth_envelope_fault(r, status, why));
}


/*
 * login() or logout() answered here (sf_oauth_soap_login on).  The ids
 * come from the token answer; the user's names from the identity service,
 * read once: a login() waits for that read, at most the credential's
 * timeout, then answers with what is known.
 */

static ngx_int_t
ngx_http_sf_oauth_soap_login(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_http_sf_oauth_envelope_t *env)
{
    ngx_str_t                  token;
    ngx_http_sf_oauth_who_t    who;
    ngx_http_sf_oauth_cred_t  *cred;

    cred = ctx->cred;
    ctx->envelope = env;

    if (env->call != NGX_HTTP_SF_OAUTH_CALL_LOGIN) {
        return ngx_http_sf_oauth_soap_answer(r, ctx);
    }

    if (ngx_http_sf_oauth_store_identity(cred, r->pool, &who) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (who.known || who.org_id.len == 0) {
        return ngx_http_sf_oauth_soap_answer(r, ctx);
    }

    if (cred->identity == NULL
        && (cred->identity_tried == 0
            || ngx_current_msec - cred->identity_tried
               >= NGX_HTTP_SF_OAUTH_IDENTITY_RETRY))
    {
        token.data = ctx->authorization.data + sizeof("Bearer ") - 1;
        token.len = ctx->authorization.len - (sizeof("Bearer ") - 1);

        (void) ngx_http_sf_oauth_refresh_identity(cred, &who.org_id,
                                                 &who.user_id, &token);
    }

    if (cred->identity == NULL) {
        return ngx_http_sf_oauth_soap_answer(r, ctx);
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "sf_oauth: credential \"%V\": login() waits for the "
                   "identity service", &cred->name);

    ctx->waiter.event.handler = ngx_http_sf_oauth_login_wait;
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
ngx_http_sf_oauth_login_wait(ngx_event_t *ev)
{
    ngx_connection_t         *c;
    ngx_http_request_t       *r;
    ngx_http_sf_oauth_ctx_t  *ctx;

    ctx = (ngx_http_sf_oauth_ctx_t *)
              ((u_char *) ev - offsetof(ngx_http_sf_oauth_ctx_t, waiter.event));
    r = ctx->request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    if (ctx->cred->identity
        && (ngx_msec_int_t) (ctx->deadline - ngx_current_msec) > 0)
    {
        ngx_add_timer(ev, NGX_HTTP_SF_OAUTH_POLL_MAX);
        return;
    }

    r->read_event_handler = ngx_http_block_reading;

    ngx_http_finalize_request(r, ngx_http_sf_oauth_soap_answer(r, ctx));
    ngx_http_run_posted_requests(c);
}


/* the answer to login() or logout(), with what is known of the user */

static ngx_int_t
ngx_http_sf_oauth_soap_answer(ngx_http_request_t *r,
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

        return ngx_http_sf_oauth_envelope_fault(r,
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

    return ngx_http_sf_oauth_envelope_login(r, env, &who, sandbox);
}


/*
 * The first lookup of a request of an sf_oauth location, with its ctx:
 * on the hot path the ctx and the header value are the only allocations,
 * both from the request's pool.  The ctx's pool cleanup is a part of it,
 * linked by hand: no allocation, and it finds the ctx again after an
 * internal redirect zeroed the module contexts.  *rc is the lookup's
 * answer.
 */

static ngx_http_sf_oauth_ctx_t *
ngx_http_sf_oauth_create_ctx(ngx_http_request_t *r,
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_lookup_t *lk,
    ngx_int_t *rc)
{
    ngx_http_sf_oauth_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_sf_oauth_ctx_t));
    if (ctx == NULL) {
        return NULL;
    }

    ctx->request = r;
    ctx->cred = cred;

    ctx->cln.handler = ngx_http_sf_oauth_cleanup;
    ctx->cln.data = ctx;
    ctx->cln.next = r->pool->cleanup;
    r->pool->cleanup = &ctx->cln;

    ngx_http_set_ctx(r, ctx, ngx_http_sf_oauth_module);

    *rc = ngx_http_sf_oauth_store_lookup(cred, r->pool, lk);

    return ctx;
}


/*
 * A request whose "sf_oauth $variable" is empty goes upstream without a
 * token, unless sf_oauth_soap_login is on and it is a SOAP call: that may
 * be a login(), whose password must not go to Salesforce, and no
 * credential can answer it here.
 */

static ngx_int_t
ngx_http_sf_oauth_unmapped(ngx_http_request_t *r,
    ngx_http_sf_oauth_loc_conf_t *slcf)
{
    if (!slcf->soap_login
        || ngx_http_sf_oauth_envelope_kind(r) != NGX_HTTP_SF_OAUTH_SOAP)
    {
        return slcf->handler(r);
    }

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_sf_oauth_envelope_fault(r, NGX_HTTP_FORBIDDEN,
                                            &ngx_http_sf_oauth_nomap);
}


/*
 * A clone subrequest comes with this module's content handler but without
 * a ctx: it gets the cached token, or a 502 (a refresh is started if none
 * runs).  It cannot wait: it is a background cache update, whose answer
 * no client waits for.
 */

static ngx_int_t
ngx_http_sf_oauth_clone(ngx_http_request_t *r, ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_ctx_t **cp)
{
    ngx_int_t                    rc;
    ngx_http_sf_oauth_ctx_t     *ctx;
    ngx_http_sf_oauth_lookup_t   lk;

    *cp = NULL;

    ctx = ngx_http_sf_oauth_create_ctx(r, cred, &lk, &rc);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    switch (rc) {

    case NGX_HTTP_SF_OAUTH_GOT_TOKEN:
        ctx->authorization = lk.authorization;
        ctx->generation = lk.generation;
        ctx->status = NGX_HTTP_SF_OAUTH_HIT;
        *cp = ctx;
        return NGX_OK;

    case NGX_HTTP_SF_OAUTH_GOT_LEASE:
        (void) ngx_http_sf_oauth_refresh_start(cred, &lk);

        /* fall through */

    case NGX_HTTP_SF_OAUTH_GOT_WAIT:
        lk.error = ngx_http_sf_oauth_error_clone;
        lk.retry_after = 1;

        /* fall through */

    case NGX_HTTP_SF_OAUTH_GOT_ERROR:
        return ngx_http_sf_oauth_send_error(r, ctx, &lk.error,
                                            lk.retry_after);

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
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

        /* the header gets it in the content phase, not before */
        ctx->authorization = lk->authorization;
        ctx->generation = lk->generation;
        ctx->token_ms = lk->token_ms;

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

        if (ngx_http_sf_oauth_refresh_start(ctx->cred, lk) != NGX_OK) {
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


static ngx_int_t
ngx_http_sf_oauth_wait(ngx_http_request_t *r, ngx_http_sf_oauth_ctx_t *ctx)
{
    if (ctx->waiter.event.handler == NULL) {
        ctx->waiter.event.handler = ngx_http_sf_oauth_wake;
        ctx->waiter.event.data = r->connection;
        ctx->waiter.event.log = r->connection->log;
    }

    if (!ctx->wait_begun) {
        ctx->wait_begun = 1;
        ctx->deadline = ngx_current_msec + ctx->cred->timeout
                        + 2 * NGX_HTTP_SF_OAUTH_LEASE_SLACK;

        if (ngx_http_sf_oauth_fleet_on(ctx->cred)) {
            /* and the takeover of a dead node's lease in the fleet */
            ctx->deadline += ctx->cred->timeout
                             + NGX_HTTP_SF_OAUTH_LEASE_SLACK;
        }
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
        ngx_queue_insert_tail(&ctx->cred->waiters, &ctx->waiter.queue);
    }

    ngx_add_timer(&ctx->waiter.event, ctx->poll);

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
ngx_http_sf_oauth_handler_hold(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_int_t    rc;
    ngx_msec_t   until;
    ngx_time_t  *tp;

    rc = ngx_http_sf_oauth_store_rejected(ctx->cred, ctx->generation,
                                          &until);

    ngx_http_sf_oauth_store_count_replay(ctx->cred);

    if (!ctx->replayed) {
        ctx->rejected_ms = ngx_http_sf_oauth_wall_ms(tp);
    }

    /* the token that failed is no longer the request's */
    ctx->token_ms = 0;

    ctx->noted = 1;
    ctx->held = 1;
    ctx->status = NGX_HTTP_SF_OAUTH_RETRY;
    ctx->limit_rate = r->limit_rate;
    ctx->limit_rate_set = r->limit_rate_set;

    r->preserve_body = 1;
    r->buffered |= NGX_HTTP_SF_OAUTH_BUFFERED;

    ctx->wait_begun = 0;

    if (ngx_http_sf_oauth_wait(r, ctx) != NGX_AGAIN) {
        return NGX_ERROR;
    }

    if (rc == NGX_HTTP_SF_OAUTH_REJ_LATER) {
        /* a 401 that refreshes did not cure lately: ask again at "until" */
        ctx->later = 1;
        ctx->rejected_until = until;
        ctx->deadline += until - ngx_current_msec;

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "sf_oauth: credential \"%V\": 401 held, the next "
                       "refresh in %M ms", &ctx->cred->name,
                       until - ngx_current_msec);
    }

    ngx_http_sf_oauth_timer_post(&ctx->waiter.event);

    return NGX_OK;
}


/*
 * Whether a replay's token was got before the request's first 401 came:
 * another worker's or node's refresh, found newer than the token that
 * failed.  Then a 401 to the replay says that this token died too (two
 * revocations while the request was under way, or a node that had not
 * yet learned the fleet's newest token), not that no refresh cures this
 * 401: the request is held once more, and replayed with the newest token,
 * as a rule got after its 401.  A request never has more than two
 * replays.  The cost, with a 401 that no refresh cures: a request whose
 * first replay used another request's token is held a second time, until
 * the next refresh the store allows; so are requests whose token looks
 * older than it is (clocks of a fleet's nodes apart, timer_resolution, a
 * clock stepped back).
 */

ngx_uint_t
ngx_http_sf_oauth_handler_older_token(ngx_http_sf_oauth_ctx_t *ctx)
{
    return ctx->replays == 1
           && ctx->token_ms != 0
           && ctx->token_ms < ctx->rejected_ms;
}


static void
ngx_http_sf_oauth_held_writer(ngx_http_request_t *r)
{
    ngx_event_t  *wev;

    wev = r->connection->write;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "sf_oauth: held request write event");

    if (wev->timer_set && !wev->delayed) {
        ngx_del_timer(wev);
    }
}


static void
ngx_http_sf_oauth_wake(ngx_event_t *ev)
{
    ngx_int_t                    rc;
    ngx_msec_t                   until;
    ngx_connection_t            *c;
    ngx_http_request_t          *r;
    ngx_http_sf_oauth_ctx_t     *ctx;
    ngx_http_sf_oauth_lookup_t   lk;

    ctx = (ngx_http_sf_oauth_ctx_t *)
              ((u_char *) ev - offsetof(ngx_http_sf_oauth_ctx_t, waiter.event));
    r = ctx->request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    ngx_http_sf_oauth_unwait(ctx);

    if (ctx->held && (r->upstream == NULL || r->upstream->cleanup == NULL)) {
        /* the 401 is drained and the request parked: no send_timeout */
        r->write_event_handler = ngx_http_sf_oauth_held_writer;
        ngx_http_sf_oauth_held_writer(r);
    }

    if (ctx->later) {
        rc = NGX_HTTP_SF_OAUTH_REJ_LATER;

        if ((ngx_msec_int_t) (ctx->rejected_until - ngx_current_msec) <= 0) {
            rc = ngx_http_sf_oauth_store_rejected(ctx->cred, ctx->generation,
                                                  &until);
            if (rc == NGX_HTTP_SF_OAUTH_REJ_LATER) {
                ctx->rejected_until = until;
            }
        }

        if (rc == NGX_HTTP_SF_OAUTH_REJ_LATER
            && (ngx_msec_int_t) (ctx->deadline - ngx_current_msec) > 0)
        {
            (void) ngx_http_sf_oauth_wait(r, ctx);
            return;
        }

        ctx->later = 0;
    }

    rc = ngx_http_sf_oauth_apply(r, ctx, &lk);

    if (rc == NGX_AGAIN) {
        if ((ngx_msec_int_t) (ctx->deadline - ngx_current_msec) > 0) {
            return;
        }

        ngx_http_sf_oauth_unwait(ctx);

        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "sf_oauth: credential \"%V\": %V",
                      &ctx->cred->name, &ngx_http_sf_oauth_error_timeout);

        ngx_http_sf_oauth_store_wait_timeout(ctx->cred);

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
            /* the token is known: go on with the phases where they stopped */
            r->read_event_handler = ngx_http_block_reading;
            r->write_event_handler = ngx_http_core_run_phases;
            ngx_http_core_run_phases(r);
        }

    } else if (rc == NGX_HTTP_BAD_GATEWAY) {
        (void) ngx_http_sf_oauth_fail_request(r, ctx, &lk.error,
                                              lk.retry_after);

    } else {
        ngx_http_sf_oauth_end_upstream(r);
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

    /* as the content phase leaves them before a content handler runs */
    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_request_empty_handler;
}


/*
 * Runs the location's content handler again, the proxy's: it creates a new
 * upstream (closing one that may still drain the 401) and finds the request
 * body read already, so it sends the same method, headers and body.
 */

static void
ngx_http_sf_oauth_replay(ngx_http_request_t *r, ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "sf_oauth: credential \"%V\": replaying the request",
                   &ctx->cred->name);

    ctx->replays++;

    ngx_http_finalize_request(r, r->content_handler(r));
}


static void
ngx_http_sf_oauth_unwait(ngx_http_sf_oauth_ctx_t *ctx)
{
    if (ctx->waiter.event.timer_set) {
        ngx_del_timer(&ctx->waiter.event);
    }

    if (ctx->waiter.event.posted) {
        ngx_delete_posted_event(&ctx->waiter.event);
    }

    if (ctx->waiting) {
        ngx_queue_remove(&ctx->waiter.queue);
        ctx->waiting = 0;
    }
}


static void
ngx_http_sf_oauth_cleanup(void *data)
{
    ngx_http_sf_oauth_ctx_t  *ctx = data;

    ngx_http_sf_oauth_unwait(ctx);

    /* a client that went away while its envelope inflated */
    if (ctx->inflating.posted) {
        ngx_delete_posted_event(&ctx->inflating);
    }

    if (ctx->inflating.timer_set) {
        ngx_del_timer(&ctx->inflating);
    }
}


/*
 * The token in the Authorization header, for the upstream request only;
 * for Bulk 1.0, or when the client sent one, in X-SFDC-Session too; for
 * SOAP, in the envelope.  An element's lowcase_key marks a value of this
 * module's: whatever finds the header between here and
 * ngx_http_sf_oauth_handler_unset_token() can tell (see
 * ngx_http_sf_oauth_handler_authorization_variable).
 */

static u_char  ngx_http_sf_oauth_lowcase_key[] = "authorization";
static u_char  ngx_http_sf_oauth_lowcase_session[] = "x-sfdc-session";
static u_char  ngx_http_sf_oauth_lowcase_coding[] = "content-encoding";
static u_char  ngx_http_sf_oauth_lowcase_connection[] = "connection";


static ngx_int_t
ngx_http_sf_oauth_set_token(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_str_t                  token;
    ngx_list_t                *in;
    ngx_table_elt_t           *h;
    ngx_http_sf_oauth_slot_t  *slot;

    static ngx_str_t  auth = ngx_string("Authorization");
    static ngx_str_t  session = ngx_string("X-SFDC-Session");
    static ngx_str_t  coding = ngx_string("Content-Encoding");
    static ngx_str_t  identity = ngx_string("identity");

    in = &r->headers_in.headers;

    if (ctx->auth.header == NULL
        && (r != r->main || r->main->count > 1) && !ctx->unshared)
    {
        /*
         * A subrequest shares the header list's elements with its
         * parent, and a main request with its subrequests (mirror).
         */
        if (ngx_http_sf_oauth_unshare(r) != NGX_OK) {
            return NGX_ERROR;
        }

        ctx->unshared = 1;
    }

    h = ngx_http_sf_oauth_set_header(r, &ctx->auth,
                                     r->headers_in.authorization, &auth,
                                     ngx_http_sf_oauth_lowcase_key,
                                     &ctx->authorization);
    if (h == NULL) {
        return NGX_ERROR;
    }

    r->headers_in.authorization = h;

    token.data = ctx->authorization.data + sizeof("Bearer ") - 1;
    token.len = ctx->authorization.len - (sizeof("Bearer ") - 1);

    h = ctx->session.header;

    if (h == NULL) {
        h = ngx_http_sf_oauth_handler_find(in, &session, NULL);
    }

    if (h || ctx->kind == NGX_HTTP_SF_OAUTH_BULK) {
        if (ngx_http_sf_oauth_set_header(r, &ctx->session, h, &session,
                                         ngx_http_sf_oauth_lowcase_session,
                                         &token)
            == NULL)
        {
            return NGX_ERROR;
        }
    }

    /*
     * A client that sent X-SFDC-Session twice: no value of its goes on,
     * and the upstream gets one.  The others pass for "Connection" while
     * the proxy builds the request: the proxy sends its own Connection
     * header, never the client's.
     */

    for (h = ctx->session.header
             ? ngx_http_sf_oauth_handler_find(in, &session,
                                              ctx->session.header)
             : NULL;
         h;
         h = ngx_http_sf_oauth_handler_find(in, &session, h))
    {
        if (ctx->sessions == NULL) {
            ctx->sessions = ngx_array_create(r->pool, 1,
                                             sizeof(ngx_http_sf_oauth_slot_t));
            if (ctx->sessions == NULL) {
                return NGX_ERROR;
            }
        }

        slot = ngx_array_push(ctx->sessions);
        if (slot == NULL) {
            return NGX_ERROR;
        }

        ngx_memzero(slot, sizeof(ngx_http_sf_oauth_slot_t));

        if (ngx_http_sf_oauth_set_header(r, slot, h, &session,
                                         ngx_http_sf_oauth_lowcase_session,
                                         &token)
            == NULL)
        {
            return NGX_ERROR;
        }

        h->key.len = sizeof("connection") - 1;
        h->lowcase_key = ngx_http_sf_oauth_lowcase_connection;
        h->hash = ngx_hash_key(h->lowcase_key, h->key.len);
    }

    if (ctx->envelope == NULL) {
        return NGX_OK;
    }

    if (ctx->gzipped) {
        /*
         * The envelope goes inflated.  The element is looked up here: the
         * header list may have just been copied (ngx_http_sf_oauth_unshare).
         */
        h = ctx->coding.header ? ctx->coding.header
                               : ngx_http_sf_oauth_encoding(r);

        if (h
            && ngx_http_sf_oauth_set_header(r, &ctx->coding, h, &coding,
                                            ngx_http_sf_oauth_lowcase_coding,
                                            &identity)
               == NULL)
        {
            return NGX_ERROR;
        }
    }

    return ngx_http_sf_oauth_set_envelope(r, ctx, &token);
}


/*
 * One header element gets "value": "h", the client's, or a new one with
 * "key".  The element is returned.
 */

static ngx_table_elt_t *
ngx_http_sf_oauth_set_header(ngx_http_request_t *r,
    ngx_http_sf_oauth_slot_t *slot, ngx_table_elt_t *h, ngx_str_t *key,
    u_char *lowcase_key, ngx_str_t *value)
{
    if (slot->header) {
        h = slot->header;

    } else if (h) {
        slot->saved_key = h->key;
        slot->saved_value = h->value;
        slot->saved_lowcase_key = h->lowcase_key;
        slot->saved_hash = h->hash;
        slot->pushed = 0;
        slot->header = h;

    } else {
        h = ngx_list_push(&r->headers_in.headers);
        if (h == NULL) {
            return NULL;
        }

#if (nginx_version >= 1023000)
        h->next = NULL;
#endif
        h->key = *key;
        slot->pushed = 1;
        slot->header = h;
    }

    h->lowcase_key = lowcase_key;
    h->hash = ngx_hash_key(lowcase_key, key->len);
    h->value = *value;

    return h;
}


/* the header "name" of a list after the element "after", or its first one */

ngx_table_elt_t *
ngx_http_sf_oauth_handler_find(ngx_list_t *list, ngx_str_t *name,
    ngx_table_elt_t *after)
{
    ngx_uint_t        i;
    ngx_table_elt_t  *h;
    ngx_list_part_t  *part;

    for (part = &list->part; part; part = part->next) {
        h = part->elts;

        for (i = 0; i < part->nelts; i++) {
            if (after) {
                if (&h[i] == after) {
                    after = NULL;
                }

                continue;
            }

            if (h[i].hash
                && h[i].key.len == name->len
                && ngx_strncasecmp(h[i].key.data, name->data, name->len) == 0)
            {
                return &h[i];
            }
        }
    }

    return NULL;
}


/*
 * The envelope with the token goes to the upstream: the request body, and
 * its length, are the envelope's until the upstream request is built.
 */

static ngx_int_t
ngx_http_sf_oauth_set_envelope(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *token)
{
    off_t         size;
    ngx_chain_t  *body;

    if (ngx_http_sf_oauth_envelope_jwt(token)
        && ctx->cred->jwt_generation != ctx->generation)
    {
        ctx->cred->jwt_generation = ctx->generation;

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "sf_oauth: credential \"%V\": the access token is a "
                      "JWT, and the SOAP API refuses JWT-based access tokens "
                      "with INVALID_SESSION_ID: turn off \"Issue JSON Web "
                      "Token (JWT)-based access tokens for named users\" in "
                      "the connected app's OAuth settings",
                      &ctx->cred->name);
    }

    if (ngx_http_sf_oauth_envelope_body(r->pool, ctx->envelope, token, &body,
                                        &size)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    r->request_body->bufs = body;
    r->headers_in.content_length_n = size;
    ctx->body_set = 1;

    return NGX_OK;
}


/* takes the token out of the request again: the client's values, or none */

void
ngx_http_sf_oauth_handler_unset_token(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_uint_t                 i;
    ngx_table_elt_t           *h;
    ngx_http_sf_oauth_slot_t  *slot;

    if (ctx->body_set) {
        ctx->body_set = 0;
        r->request_body->bufs = ctx->client_body;
        r->headers_in.content_length_n = ctx->client_length;
    }

    /* the element pushed last goes first */

    ngx_http_sf_oauth_unset_header(r, &ctx->coding);

    if (ctx->sessions) {
        slot = ctx->sessions->elts;

        for (i = ctx->sessions->nelts; i > 0; i--) {
            ngx_http_sf_oauth_unset_header(r, &slot[i - 1]);
        }

        ctx->sessions->nelts = 0;
    }

    ngx_http_sf_oauth_unset_header(r, &ctx->session);

    h = ctx->auth.header;

    if (h && ctx->auth.pushed && r->headers_in.authorization == h) {
        r->headers_in.authorization = NULL;
    }

    ngx_http_sf_oauth_unset_header(r, &ctx->auth);
}


static void
ngx_http_sf_oauth_unset_header(ngx_http_request_t *r,
    ngx_http_sf_oauth_slot_t *slot)
{
    ngx_list_part_t  *last;
    ngx_table_elt_t  *h;

    h = slot->header;

    if (h == NULL) {
        return;
    }

    slot->header = NULL;

    if (!slot->pushed) {
        h->key = slot->saved_key;
        h->value = slot->saved_value;
        h->lowcase_key = slot->saved_lowcase_key;
        h->hash = slot->saved_hash;
        return;
    }

    /* a copy of the list made meanwhile (a clone subrequest) sees it dead */
    h->hash = 0;
    ngx_str_null(&h->value);

    /* the element was pushed last, and nothing pushes after it */

    last = r->headers_in.headers.last;

    if (last->nelts && (ngx_table_elt_t *) last->elts + last->nelts - 1 == h) {
        last->nelts--;
        return;
    }

    /* not the last one after all: it stays, as a header that says nothing */

    ngx_str_set(&h->key, "X-SF-OAuth");
    h->lowcase_key = (u_char *) "x-sf-oauth";
}


/*
 * Gives the main request a header list of its own, with copies of the
 * elements: a subrequest made before (mirror) keeps the old list, whose
 * elements it shares, so that it never sees the token.
 */

static ngx_int_t
ngx_http_sf_oauth_unshare(ngx_http_request_t *r)
{
    ngx_uint_t        i, n;
    ngx_list_t        old;
    ngx_table_elt_t  *h, *dst, *auth;
    ngx_list_part_t  *part;

    old = r->headers_in.headers;
    auth = NULL;
    n = 0;

    for (part = &old.part; part; part = part->next) {
        n += part->nelts;
    }

    if (ngx_list_init(&r->headers_in.headers, r->pool, n + 1,
                      sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    for (part = &old.part; part; part = part->next) {
        h = part->elts;

        for (i = 0; i < part->nelts; i++) {

            if (h[i].lowcase_key == ngx_http_sf_oauth_lowcase_key
                || h[i].lowcase_key == ngx_http_sf_oauth_lowcase_session
                || h[i].lowcase_key == ngx_http_sf_oauth_lowcase_connection)
            {
                /* a token, or a dead one: another request's, never copied */
                continue;
            }

            dst = ngx_list_push(&r->headers_in.headers);
            if (dst == NULL) {
                return NGX_ERROR;
            }

            *dst = h[i];

            if (&h[i] == r->headers_in.authorization) {
                auth = dst;
            }
        }
    }

    r->headers_in.authorization = auth;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "sf_oauth: a header list of its own, %ui elements", n);

    return NGX_OK;
}


/*
 * The request's ctx, also after an internal redirect zeroed the module
 * contexts: the ctx's own pool cleanup finds it then.
 */

ngx_http_sf_oauth_ctx_t *
ngx_http_sf_oauth_handler_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t       *cln;
    ngx_http_sf_oauth_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_sf_oauth_module);

    if (ctx || !r->internal) {
        return ctx;
    }

    if (r != r->main) {
        return NULL;
    }

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_sf_oauth_cleanup) {
            ctx = cln->data;

            if (ctx->request == r) {
                return ctx;
            }
        }
    }

    return NULL;
}


/*
 * A 401 from the upstream that got this request's token, whatever the
 * location does with it (passed through, intercepted by error_page):
 * the token is dead, unless a newer one is there already.
 */

static void
ngx_http_sf_oauth_note_401(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_msec_t  until;

    if (ctx->noted
        || ctx->upstream == NULL
        || ctx->upstream != r->upstream
        || ctx->upstream->headers_in.status_n != NGX_HTTP_UNAUTHORIZED)
    {
        return;
    }

    ctx->noted = 1;

    if (ctx->replayed && !ngx_http_sf_oauth_handler_older_token(ctx)) {
        ngx_http_sf_oauth_store_replayed(ctx->cred, ctx->generation, 0,
                                         r->connection->log);
        return;
    }

    (void) ngx_http_sf_oauth_store_rejected(ctx->cred, ctx->generation,
                                            &until);
}


/*
 * The rewrite phase: runs first in every location.  After an internal
 * redirect (error_page, try_files, a named location) the token is taken
 * out of the header before the next location can see it, and a 401 that
 * error_page intercepted is noted.
 */

ngx_int_t
ngx_http_sf_oauth_handler_rewrite(ngx_http_request_t *r)
{
    ngx_http_sf_oauth_ctx_t  *ctx;

    if (r != r->main || !r->internal) {
        return NGX_DECLINED;
    }

    if (ngx_http_get_module_ctx(r, ngx_http_sf_oauth_module)) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_sf_oauth_handler_ctx(r);

    if (ctx) {
        ngx_http_sf_oauth_handler_unset_token(r, ctx);
        ngx_http_sf_oauth_note_401(r, ctx);
    }

    return NGX_DECLINED;
}


/* the response header: the token is out, and a 401 is noted */

void
ngx_http_sf_oauth_handler_response_header(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_http_sf_oauth_handler_unset_token(r, ctx);

    if (ctx->upstream == NULL || ctx->upstream != r->upstream) {
        return;
    }

    if (ctx->upstream->headers_in.status_n == NGX_HTTP_UNAUTHORIZED) {
        /* a 401 of an sf_oauth location is never cached */
        ctx->upstream->cacheable = 0;
        ngx_http_sf_oauth_note_401(r, ctx);

    } else if (ctx->replayed && !ctx->noted) {
        ctx->noted = 1;
        ngx_http_sf_oauth_store_replayed(ctx->cred, ctx->generation, 1,
                                         r->connection->log);
    }
}


/* the log phase: runs before the access log, see ngx_http_sf_oauth_init */

ngx_int_t
ngx_http_sf_oauth_handler_log(ngx_http_request_t *r)
{
    ngx_http_sf_oauth_ctx_t  *ctx;

    if (r == r->main) {
        ctx = ngx_http_sf_oauth_handler_ctx(r);

        if (ctx) {
            ngx_http_sf_oauth_handler_unset_token(r, ctx);
            ngx_http_sf_oauth_metrics_count(ctx->cred, ctx->status);
        }
    }

    return NGX_OK;
}


/*
 * $http_authorization: the client's own Authorization header, never the
 * token.  Exact variable names win over the "http_" prefix, so this
 * variable is what every $http_authorization in the configuration reads.
 */

ngx_int_t
ngx_http_sf_oauth_handler_authorization_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                *value;
    ngx_table_elt_t          *h;
    ngx_http_sf_oauth_ctx_t  *ctx;

    h = r->headers_in.authorization;
    value = h ? &h->value : NULL;

    if (h && h->lowcase_key == ngx_http_sf_oauth_lowcase_key) {
        ctx = ngx_http_get_module_ctx(r, ngx_http_sf_oauth_module);

        if (ctx == NULL || ctx->auth.header != h) {
            ctx = ngx_http_sf_oauth_handler_ctx(r->main);
        }

        value = (ctx && ctx->auth.header == h && !ctx->auth.pushed)
                ? &ctx->auth.saved_value : NULL;
    }

    if (value == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = value->len;
    v->data = value->data;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


/*
 * $request_body: the client's body, never the envelope with the token.
 * The envelope is the request body only while the proxy builds the
 * upstream request, but a $request_body evaluated then (a proxy_cache_key,
 * a proxy_set_header) would keep the envelope as the variable's cached
 * value, for the access log too.  The core variable cannot be defined
 * again, so its handler is wrapped, before nginx indexes the variables.
 */

static ngx_http_get_variable_pt  ngx_http_sf_oauth_request_body_get;


ngx_int_t
ngx_http_sf_oauth_handler_request_body_init(ngx_conf_t *cf)
{
    ngx_uint_t                  i;
    ngx_hash_key_t             *key;
    ngx_http_variable_t        *v;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    if (cmcf->variables_keys == NULL) {
        return NGX_OK;
    }

    key = cmcf->variables_keys->keys.elts;

    for (i = 0; i < cmcf->variables_keys->keys.nelts; i++) {

        if (key[i].key.len != sizeof("request_body") - 1
            || ngx_strncmp(key[i].key.data, "request_body",
                           sizeof("request_body") - 1)
               != 0)
        {
            continue;
        }

        v = key[i].value;

        if (v->get_handler != ngx_http_sf_oauth_request_body_variable) {
            ngx_http_sf_oauth_request_body_get = v->get_handler;
            v->get_handler = ngx_http_sf_oauth_request_body_variable;
        }

        return NGX_OK;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_sf_oauth_request_body_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_int_t                 rc;
    ngx_chain_t              *envelope;
    ngx_http_sf_oauth_ctx_t  *ctx;

    ctx = ngx_http_sf_oauth_handler_ctx(r->main);

    if (ctx == NULL || !ctx->body_set || r->request_body == NULL) {
        return ngx_http_sf_oauth_request_body_get(r, v, data);
    }

    envelope = r->request_body->bufs;
    r->request_body->bufs = ctx->client_body;

    rc = ngx_http_sf_oauth_request_body_get(r, v, data);

    r->request_body->bufs = envelope;

    return rc;
}


/*
 * Ends an upstream that is still attached to the request (the held 401,
 * still streaming), as ngx_http_upstream_create() does before it reuses a
 * request: with a reference of its own, so that the upstream's finalize
 * does not free the request, which is then answered here.
 */

static void
ngx_http_sf_oauth_end_upstream(ngx_http_request_t *r)
{
    ngx_http_cleanup_pt   handler;
    ngx_http_upstream_t  *u;

    u = r->upstream;

    if (u == NULL || u->cleanup == NULL) {
        return;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "sf_oauth: ending the upstream of the held 401");

    handler = *u->cleanup;

    r->main->count++;
    handler(r);

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_request_empty_handler;
}


/* answers 502 with the JSON error and finalizes the request */

static ngx_int_t
ngx_http_sf_oauth_fail_request(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *error, time_t retry_after)
{
    ngx_http_sf_oauth_end_upstream(r);

    ngx_http_finalize_request(r,
                   ngx_http_sf_oauth_send_error(r, ctx, error, retry_after));

    return NGX_DONE;
}


/*
 * The 502: a request whose credential has no token to give
 * (sf_oauth_token_unavailable, with the credential's name), or, with no
 * ctx, a request whose "sf_oauth $variable" names no credential
 * (sf_oauth_unknown_credential: the name is not echoed).  Each API gets
 * it in the shape its clients parse: a REST request the JSON error, a
 * SOAP request a soapenv:Server fault, a Bulk 1.0 request the Bulk API's
 * error, in XML or, for a JSON job, in JSON.
 */

static ngx_int_t
ngx_http_sf_oauth_send_error(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *error, time_t retry_after)
{
    size_t            len;
    u_char           *p;
    ngx_str_t         code, name, why;
    ngx_buf_t        *b;
    ngx_int_t         rc;
    ngx_uint_t        kind;
    ngx_table_elt_t  *h;

    if (ctx) {
        ctx->status = NGX_HTTP_SF_OAUTH_ERROR;
        ngx_str_set(&code, "sf_oauth_token_unavailable");
        name = ctx->cred->name;

    } else {
        ngx_str_set(&code, "sf_oauth_unknown_credential");
        ngx_str_null(&name);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

#if (nginx_version >= 1023000)
    h->next = NULL;
#endif
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

#if (nginx_version >= 1023000)
        h->next = NULL;
#endif
        h->hash = 1;
        ngx_str_set(&h->key, "Retry-After");
        h->value.len = ngx_sprintf(h->value.data, "%T", retry_after)
                       - h->value.data;
    }

    kind = ngx_http_sf_oauth_envelope_kind(r);

    if (kind != NGX_HTTP_SF_OAUTH_REST) {
        /* "CODE: credential "NAME": ERROR", or "CODE: ERROR" */

        len = code.len + sizeof(": credential \"\": ") - 1 + name.len
              + error->len;

        why.data = ngx_pnalloc(r->pool, len);
        if (why.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p = ngx_sprintf(why.data, "%V: ", &code);

        if (name.len) {
            p = ngx_sprintf(p, "credential \"%V\": ", &name);
        }

        why.len = ngx_cpymem(p, error->data, error->len) - why.data;

        if (kind == NGX_HTTP_SF_OAUTH_SOAP) {
            return ngx_http_sf_oauth_envelope_fault(r, NGX_HTTP_BAD_GATEWAY,
                                                    &why);
        }

        return ngx_http_sf_oauth_send_bulk_error(r, NGX_HTTP_BAD_GATEWAY,
                                                 &code, &why);
    }

    len = sizeof("{\"error\":\"\",\"error_description\":\"\","
                 "\"credential\":\"\"}\n") - 1
          + code.len
          + error->len + ngx_escape_json(NULL, error->data, error->len)
          + name.len;

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(b->last, "{\"error\":\"%V\",\"error_description\":\"",
                    &code);
    p = (u_char *) ngx_escape_json(p, error->data, error->len);

    if (name.len) {
        p = ngx_sprintf(p, "\",\"credential\":\"%V", &name);
    }

    p = ngx_cpymem(p, "\"}\n", sizeof("\"}\n") - 1);

    b->last = p;

    return ngx_http_sf_oauth_send(r, NGX_HTTP_BAD_GATEWAY, "application/json",
                                  b);
}
