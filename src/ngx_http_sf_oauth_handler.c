
/*
 * Request handling: the phases of a request of an sf_oauth location.  The
 * precontent handler looks the token up, and has the request wait for a
 * refresh (ngx_http_sf_oauth_wait.c) or answered 502 with what failed
 * (ngx_http_sf_oauth_fail.c); the content handler, which wraps the
 * location's own, has the token put on the upstream request and taken
 * off again (ngx_http_sf_oauth_inject.c), a SOAP envelope read first
 * (ngx_http_sf_oauth_soap.c).  Also here: the credential of a request,
 * its ctx, the response header and log phases, and the variables that
 * never show the token, $http_authorization and $request_body.
 *
 * The handler runs in the precontent phase, after access control: a
 * request that auth_basic, auth_request or allow/deny turn away never
 * costs a token request, and an auth_request subrequest never carries the
 * Salesforce token.
 *
 * Only a request that goes to an upstream needs a token: one whose
 * location has a content handler (proxy_pass and the like).  Static
 * files, "return", try_files and sf_oauth_info are never gated.
 */


#include "ngx_http_sf_oauth.h"


static ngx_http_sf_oauth_ctx_t *ngx_http_sf_oauth_create_ctx(
    ngx_http_request_t *r, ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_lookup_t *lk, ngx_int_t *rc);
static ngx_int_t ngx_http_sf_oauth_proxy_unmapped(ngx_http_request_t *r,
    ngx_http_sf_oauth_loc_conf_t *slcf);
static ngx_int_t ngx_http_sf_oauth_serve_clone(ngx_http_request_t *r,
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_ctx_t **cp);
static ngx_int_t ngx_http_sf_oauth_request_body_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static void ngx_http_sf_oauth_note_401(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static void ngx_http_sf_oauth_note_dead(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static ngx_int_t ngx_http_sf_oauth_header_variable(
    ngx_http_variable_value_t *v, ngx_str_t *value);


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

        rc = ngx_http_sf_oauth_wait_follow_answer(r, ctx, rc, &lk);

    } else if (ctx->waiting) {
        return NGX_AGAIN;

    } else if (ctx->authorization.len) {
        /* resumed after a wait, the token is known */
        return NGX_DECLINED;

    } else {
        rc = ngx_http_sf_oauth_wait_ask_zone(r, ctx, &lk);
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
            return ngx_http_sf_oauth_fail_send_error(r, NULL,
                                       &ngx_http_sf_oauth_error_unknown, 0);
        }

        if (rc != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (cred == NULL) {
            return ngx_http_sf_oauth_proxy_unmapped(r, slcf);
        }

        /*
         * A clone subrequest (slice, proxy_cache_background_update)
         * starts in the content phase: it looks the token up here.
         */

        rc = ngx_http_sf_oauth_serve_clone(r, cred, &ctx);
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
        ctx->kind = slcf->grpc ? NGX_HTTP_SF_OAUTH_GRPC
                               : ngx_http_sf_oauth_envelope_kind(r);
        ctx->kind_known = 1;
    }

    if (ctx->kind == NGX_HTTP_SF_OAUTH_GRPC) {

        if (r == r->main
            && r->request_body == NULL
            && ngx_http_sf_oauth_grpc_unary(r))
        {
            /* the call is read whole first; then this runs again */
            return ngx_http_sf_oauth_grpc_read_call(r);
        }

        if (ctx->replays) {
            ngx_http_sf_oauth_grpc_reuse_body(r);
        }

        if (ngx_http_sf_oauth_store_tenant(ctx->cred, r->pool,
                                           &ctx->instance_url, &ctx->org_id)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (ctx->kind == NGX_HTTP_SF_OAUTH_SOAP
        && ctx->envelope == NULL
        && r == r->main
        && r->method == NGX_HTTP_POST)
    {
        /* the envelope is read and parsed first; then this runs again */
        return ngx_http_sf_oauth_soap_read_envelope(r, ctx);
    }

    /* nginx dumps the upstream request header at debug level */
    token.data = ctx->authorization.data + sizeof("Bearer ") - 1;
    token.len = ctx->authorization.len - (sizeof("Bearer ") - 1);

    ngx_http_sf_oauth_redact_install(r, ctx->cred, ctx->generation, &token);

    if (ngx_http_sf_oauth_inject_set_token(r, ctx) != NGX_OK) {
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
        ngx_http_sf_oauth_inject_unset_token(r, ctx);
    }

    return rc;
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

    ctx->cln.handler = ngx_http_sf_oauth_wait_clean_ctx;
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
ngx_http_sf_oauth_proxy_unmapped(ngx_http_request_t *r,
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

    return ngx_http_sf_oauth_answer_fault(r, NGX_HTTP_FORBIDDEN,
                                          &ngx_http_sf_oauth_nomap);
}


/*
 * A clone subrequest comes with this module's content handler but without
 * a ctx: it gets the cached token, or a 502 (a refresh is started if none
 * runs).  It cannot wait: it is a background cache update, whose answer
 * no client waits for.
 */

static ngx_int_t
ngx_http_sf_oauth_serve_clone(ngx_http_request_t *r,
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_ctx_t **cp)
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
        return ngx_http_sf_oauth_fail_send_error(r, ctx, &lk.error,
                                                 lk.retry_after);

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
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
        if (cln->handler == ngx_http_sf_oauth_wait_clean_ctx) {
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
    if (ctx->noted
        || ctx->upstream == NULL
        || ctx->upstream != r->upstream
        || ctx->upstream->headers_in.status_n != NGX_HTTP_UNAUTHORIZED)
    {
        return;
    }

    ngx_http_sf_oauth_note_dead(r, ctx);
}


/*
 * An answer that says the token is dead (a 401, the Pub/Sub API's
 * UNAUTHENTICATED) and is not replayed: the token is dropped, by the
 * generation rule, unless this was a replay's answer.
 */

static void
ngx_http_sf_oauth_note_dead(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_msec_t  until;

    ctx->noted = 1;

    if (ctx->replayed && !ngx_http_sf_oauth_wait_is_stale_replay(ctx)) {
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
        ngx_http_sf_oauth_inject_unset_token(r, ctx);
        ngx_http_sf_oauth_note_401(r, ctx);
    }

    return NGX_DECLINED;
}


/* the response header: the token is out, and a 401 is noted */

void
ngx_http_sf_oauth_handler_response_header(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_http_sf_oauth_inject_unset_token(r, ctx);

    if (ctx->upstream == NULL || ctx->upstream != r->upstream) {
        return;
    }

    if (ctx->upstream->headers_in.status_n == NGX_HTTP_UNAUTHORIZED) {
        /* a 401 of an sf_oauth location is never cached */
        ctx->upstream->cacheable = 0;
        ngx_http_sf_oauth_note_401(r, ctx);

    } else if (ctx->kind == NGX_HTTP_SF_OAUTH_GRPC
               && !ctx->noted
               && ngx_http_sf_oauth_grpc_dead(&r->headers_out.headers))
    {
        /* a trailers-only UNAUTHENTICATED that is not replayed: passed */
        ngx_http_sf_oauth_note_dead(r, ctx);

    } else if (ctx->replayed && !ctx->noted) {
        ctx->noted = 1;
        ngx_http_sf_oauth_store_replayed(ctx->cred, ctx->generation, 1,
                                         r->connection->log);
    }
}


/*
 * The end of a gRPC call's answer (its last buffer, the trailers known): a
 * stream that ends UNAUTHENTICATED passes to the client as it is, and the
 * token is dropped, so that the client's own retry gets a new one.
 */

void
ngx_http_sf_oauth_handler_grpc_trailers(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    if (ctx->kind != NGX_HTTP_SF_OAUTH_GRPC
        || ctx->noted
        || r != r->main
        || ctx->upstream == NULL
        || ctx->upstream != r->upstream
        || !ngx_http_sf_oauth_grpc_dead(&r->headers_out.trailers))
    {
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "sf_oauth: credential \"%V\": gRPC stream ended "
                   "UNAUTHENTICATED, token generation %ui dropped",
                   &ctx->cred->name, ctx->generation);

    ngx_http_sf_oauth_note_dead(r, ctx);
}


/* the log phase: runs before the access log, see ngx_http_sf_oauth_init */

ngx_int_t
ngx_http_sf_oauth_handler_log(ngx_http_request_t *r)
{
    ngx_http_sf_oauth_ctx_t  *ctx;

    if (r == r->main) {
        ctx = ngx_http_sf_oauth_handler_ctx(r);

        if (ctx) {
            ngx_http_sf_oauth_inject_unset_token(r, ctx);
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

    if (h && h->lowcase_key == ngx_http_sf_oauth_inject_lowcase_key) {
        ctx = ngx_http_get_module_ctx(r, ngx_http_sf_oauth_module);

        if (ctx == NULL || ctx->auth.header != h) {
            ctx = ngx_http_sf_oauth_handler_ctx(r->main);
        }

        value = (ctx && ctx->auth.header == h && !ctx->auth.pushed)
                ? &ctx->auth.saved_value : NULL;
    }

    return ngx_http_sf_oauth_header_variable(v, value);
}


/*
 * $http_accesstoken: the client's own accesstoken metadata, never the
 * token that a Pub/Sub location puts there while grpc_pass builds the
 * upstream call (as $http_authorization for Authorization), and still the
 * client's while another sf_oauth location hides it from its upstream.
 */

ngx_int_t
ngx_http_sf_oauth_handler_accesstoken_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                 *value;
    ngx_uint_t                 i;
    ngx_table_elt_t           *h;
    ngx_http_sf_oauth_ctx_t   *ctx;
    ngx_http_sf_oauth_slot_t  *slot;

    static ngx_str_t  name = ngx_string("accesstoken");

    ctx = ngx_http_sf_oauth_handler_ctx(r->main);

    if (ctx && ctx->meta[0].header) {
        return ngx_http_sf_oauth_header_variable(v,
                   ctx->meta[0].pushed ? NULL : &ctx->meta[0].saved_value);
    }

    h = ngx_http_sf_oauth_inject_find_header(&r->headers_in.headers, &name,
                                             NULL);
    value = h ? &h->value : NULL;

    if (ctx && ctx->sessions) {
        /*
         * Any other location drops them all while the upstream request is
         * built (ngx_http_sf_oauth_inject_set_token()): the first one's
         */

        slot = ctx->sessions->elts;

        for (i = 0; i < ctx->sessions->nelts; i++) {
            if (slot[i].saved_key.len == name.len
                && ngx_strncasecmp(slot[i].saved_key.data, name.data,
                                   name.len)
                   == 0)
            {
                value = &slot[i].saved_value;
                break;
            }
        }
    }

    return ngx_http_sf_oauth_header_variable(v, value);
}


/* a header variable's value, the client's: not found when NULL */

static ngx_int_t
ngx_http_sf_oauth_header_variable(ngx_http_variable_value_t *v,
    ngx_str_t *value)
{
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
