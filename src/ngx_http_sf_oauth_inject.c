
/*
 * Token injection: the token put on the upstream request (the headers,
 * or a SOAP envelope), and taken off again.
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
 *   - For the Pub/Sub API (gRPC, ngx_http_sf_oauth_grpc.c) the token goes
 *     into the accesstoken metadata instead, with instanceurl and
 *     tenantid, by the same rules; $http_accesstoken is this module's too.
 */


#include "ngx_http_sf_oauth.h"


static ngx_table_elt_t *ngx_http_sf_oauth_set_header(ngx_http_request_t *r,
    ngx_http_sf_oauth_slot_t *slot, ngx_table_elt_t *h, ngx_str_t *key,
    u_char *lowcase_key, ngx_str_t *value);
static ngx_int_t ngx_http_sf_oauth_set_envelope(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *token);
static ngx_int_t ngx_http_sf_oauth_set_metadata(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *token);
static ngx_int_t ngx_http_sf_oauth_drop_metadata(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static ngx_int_t ngx_http_sf_oauth_drop_header(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_table_elt_t *h, ngx_str_t *value);
static void ngx_http_sf_oauth_unset_header(ngx_http_request_t *r,
    ngx_http_sf_oauth_slot_t *slot);
static ngx_int_t ngx_http_sf_oauth_unshare_headers(ngx_http_request_t *r);


/*
 * The token in the Authorization header, for the upstream request only;
 * for Bulk 1.0, or when the client sent one, in X-SFDC-Session too; for
 * SOAP, in the envelope.  An element's lowcase_key marks a value of this
 * module's: whatever finds the header between here and
 * ngx_http_sf_oauth_inject_unset_token() can tell (see
 * ngx_http_sf_oauth_handler_authorization_variable).
 */

u_char  ngx_http_sf_oauth_inject_lowcase_key[] = "authorization";
static u_char  ngx_http_sf_oauth_lowcase_session[] = "x-sfdc-session";
static u_char  ngx_http_sf_oauth_lowcase_coding[] = "content-encoding";
static u_char  ngx_http_sf_oauth_lowcase_connection[] = "connection";

/* the Pub/Sub API's metadata, in the order of ctx->meta */
static u_char  ngx_http_sf_oauth_lowcase_accesstoken[] = "accesstoken";
static u_char  ngx_http_sf_oauth_lowcase_instanceurl[] = "instanceurl";
static u_char  ngx_http_sf_oauth_lowcase_tenantid[] = "tenantid";

static ngx_str_t  ngx_http_sf_oauth_meta_names[] = {
    ngx_string("accesstoken"),
    ngx_string("instanceurl"),
    ngx_string("tenantid"),
    ngx_string("authorization"),
    ngx_null_string
};

static u_char  *ngx_http_sf_oauth_meta_lowcase[] = {
    ngx_http_sf_oauth_lowcase_accesstoken,
    ngx_http_sf_oauth_lowcase_instanceurl,
    ngx_http_sf_oauth_lowcase_tenantid
};


ngx_int_t
ngx_http_sf_oauth_inject_set_token(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_str_t                  token;
    ngx_list_t                *in;
    ngx_table_elt_t           *h;

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
        if (ngx_http_sf_oauth_unshare_headers(r) != NGX_OK) {
            return NGX_ERROR;
        }

        ctx->unshared = 1;
    }

    if (ctx->kind == NGX_HTTP_SF_OAUTH_GRPC) {
        token.data = ctx->authorization.data + sizeof("Bearer ") - 1;
        token.len = ctx->authorization.len - (sizeof("Bearer ") - 1);

        return ngx_http_sf_oauth_set_metadata(r, ctx, &token);
    }

    h = ngx_http_sf_oauth_set_header(r, &ctx->auth,
                                     r->headers_in.authorization, &auth,
                                     ngx_http_sf_oauth_inject_lowcase_key,
                                     &ctx->authorization);
    if (h == NULL) {
        return NGX_ERROR;
    }

    r->headers_in.authorization = h;

    if (ngx_http_sf_oauth_drop_metadata(r, ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    token.data = ctx->authorization.data + sizeof("Bearer ") - 1;
    token.len = ctx->authorization.len - (sizeof("Bearer ") - 1);

    h = ctx->session.header;

    if (h == NULL) {
        h = ngx_http_sf_oauth_inject_find_header(in, &session, NULL);
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
             ? ngx_http_sf_oauth_inject_find_header(in, &session,
                                                    ctx->session.header)
             : NULL;
         h;
         h = ngx_http_sf_oauth_inject_find_header(in, &session, h))
    {
        if (ngx_http_sf_oauth_drop_header(r, ctx, h, &token) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (ctx->envelope == NULL) {
        return NGX_OK;
    }

    if (ctx->gzipped) {
        /*
         * The envelope goes inflated.  The element is looked up here: the
         * header list may have just been copied
         * (ngx_http_sf_oauth_unshare_headers).
         */
        h = ctx->coding.header ? ctx->coding.header
                               : ngx_http_sf_oauth_inject_find_encoding(r);

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
 * The Pub/Sub API's metadata, for the upstream request only: accesstoken
 * (the token), instanceurl and tenantid (the token answer's instance_url
 * and org id), in the client's first header of each name or a new one.
 * Nothing else of the client's credentials goes on: its Authorization,
 * and its second accesstoken, instanceurl or tenantid, pass for
 * "Connection", which grpc_pass never sends (see
 * ngx_http_sf_oauth_set_token's X-SFDC-Session).
 */

static ngx_int_t
ngx_http_sf_oauth_set_metadata(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *token)
{
    ngx_str_t        *value[3];
    ngx_uint_t        i;
    ngx_table_elt_t  *h;

    value[0] = token;
    value[1] = &ctx->instance_url;
    value[2] = &ctx->org_id;

    for (i = 0; i < 3; i++) {
        h = ctx->meta[i].header
            ? NULL
            : ngx_http_sf_oauth_inject_find_header(&r->headers_in.headers,
                                              &ngx_http_sf_oauth_meta_names[i],
                                              NULL);

        if (ngx_http_sf_oauth_set_header(r, &ctx->meta[i], h,
                                         &ngx_http_sf_oauth_meta_names[i],
                                         ngx_http_sf_oauth_meta_lowcase[i],
                                         value[i])
            == NULL)
        {
            return NGX_ERROR;
        }
    }

    return ngx_http_sf_oauth_drop_metadata(r, ctx);
}


/*
 * The client's own accesstoken, instanceurl, tenantid and Authorization,
 * but those that hold the module's values, pass for "Connection": in
 * every sf_oauth location, so that a gRPC call that is not a Pub/Sub
 * location's (grpc_pass with a variable) takes none of them upstream
 * either.
 */

static ngx_int_t
ngx_http_sf_oauth_drop_metadata(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_str_t        *name;
    ngx_uint_t        i, j;
    ngx_table_elt_t  *h;
    ngx_list_part_t  *part;

    for (part = &r->headers_in.headers.part; part; part = part->next) {
        h = part->elts;

        for (i = 0; i < part->nelts; i++) {

            if (h[i].hash == 0
                || &h[i] == ctx->auth.header
                || &h[i] == ctx->meta[0].header
                || &h[i] == ctx->meta[1].header
                || &h[i] == ctx->meta[2].header)
            {
                continue;
            }

            for (j = 0; ngx_http_sf_oauth_meta_names[j].len; j++) {
                name = &ngx_http_sf_oauth_meta_names[j];

                if (h[i].key.len == name->len
                    && ngx_strncasecmp(h[i].key.data, name->data, name->len)
                       == 0)
                {
                    if (ngx_http_sf_oauth_drop_header(r, ctx, &h[i],
                                                      &h[i].value)
                        != NGX_OK)
                    {
                        return NGX_ERROR;
                    }

                    break;
                }
            }
        }
    }

    return NGX_OK;
}


/*
 * A client's header that must not go on passes for "Connection", with
 * "value", until ngx_http_sf_oauth_inject_unset_token()
 */

static ngx_int_t
ngx_http_sf_oauth_drop_header(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_table_elt_t *h, ngx_str_t *value)
{
    ngx_http_sf_oauth_slot_t  *slot;

    static ngx_str_t  connection = ngx_string("Connection");

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

    if (ngx_http_sf_oauth_set_header(r, slot, h, &connection,
                                     ngx_http_sf_oauth_lowcase_connection,
                                     value)
        == NULL)
    {
        return NGX_ERROR;
    }

    h->key = connection;

    return NGX_OK;
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
ngx_http_sf_oauth_inject_find_header(ngx_list_t *list, ngx_str_t *name,
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


/* the request's Content-Encoding, unless it is "identity" */

ngx_table_elt_t *
ngx_http_sf_oauth_inject_find_encoding(ngx_http_request_t *r)
{
    ngx_list_t       *in;
    ngx_table_elt_t  *h;

    static ngx_str_t  name = ngx_string("Content-Encoding");

    in = &r->headers_in.headers;

    for (h = ngx_http_sf_oauth_inject_find_header(in, &name, NULL);
         h;
         h = ngx_http_sf_oauth_inject_find_header(in, &name, h))
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

    if (ngx_http_sf_oauth_jwt_match_form(token)
        && ctx->cred->rt.jwt_generation != ctx->generation)
    {
        ctx->cred->rt.jwt_generation = ctx->generation;

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
ngx_http_sf_oauth_inject_unset_token(ngx_http_request_t *r,
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

    for (i = 3; i > 0; i--) {
        ngx_http_sf_oauth_unset_header(r, &ctx->meta[i - 1]);
    }

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
ngx_http_sf_oauth_unshare_headers(ngx_http_request_t *r)
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

            if (h[i].lowcase_key == ngx_http_sf_oauth_inject_lowcase_key
                || h[i].lowcase_key == ngx_http_sf_oauth_lowcase_session
                || h[i].lowcase_key == ngx_http_sf_oauth_lowcase_connection
                || h[i].lowcase_key == ngx_http_sf_oauth_lowcase_accesstoken
                || h[i].lowcase_key == ngx_http_sf_oauth_lowcase_instanceurl
                || h[i].lowcase_key == ngx_http_sf_oauth_lowcase_tenantid)
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
