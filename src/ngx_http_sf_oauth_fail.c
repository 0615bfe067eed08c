
/*
 * The 502: a request that gets no token is answered with what failed, in
 * the shape its API's clients parse, once an upstream still streaming a
 * held 401 is ended.  ngx_http_sf_oauth_send.c sends it.
 */


#include "ngx_http_sf_oauth.h"


/*
 * Ends an upstream that is still attached to the request (the held 401,
 * still streaming), as ngx_http_upstream_create() does before it reuses a
 * request: with a reference of its own, so that the upstream's finalize
 * does not free the request, which is then answered here.
 */

void
ngx_http_sf_oauth_fail_end_upstream(ngx_http_request_t *r)
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

ngx_int_t
ngx_http_sf_oauth_fail_request(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *error, time_t retry_after)
{
    ngx_http_sf_oauth_fail_end_upstream(r);

    ngx_http_finalize_request(r,
              ngx_http_sf_oauth_fail_send_error(r, ctx, error, retry_after));

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

ngx_int_t
ngx_http_sf_oauth_fail_send_error(ngx_http_request_t *r,
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

    if (kind == NGX_HTTP_SF_OAUTH_SOAP || kind == NGX_HTTP_SF_OAUTH_BULK) {
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
            return ngx_http_sf_oauth_answer_fault(r, NGX_HTTP_BAD_GATEWAY,
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

