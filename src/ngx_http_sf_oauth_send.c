
/*
 * A response that the module makes itself, sent whole, and the Bulk API
 * 1.0's error shape.
 */


#include "ngx_http_sf_oauth.h"


/*
 * Sends a body made by this module, of "type": the 502 JSON error,
 * sf_oauth_info, a SOAP fault or login() answer.
 */

ngx_int_t
ngx_http_sf_oauth_send(ngx_http_request_t *r, ngx_uint_t status,
    const char *type, ngx_buf_t *b)
{
    size_t                     len;
    u_char                    *semicolon;
    ngx_int_t                  rc;
    ngx_str_t                  ct;
    ngx_chain_t                out;
    ngx_http_complex_value_t   cv;

    len = ngx_strlen(type);
    semicolon = ngx_strlchr((u_char *) type, (u_char *) type + len, ';');

    /* a type set before, such as an upstream's, is not matched on */
    r->headers_out.content_type_lowcase = NULL;

    if (semicolon == NULL) {

        /*
         * nginx's own: the same status, type, length and body, the header
         * alone for HEAD, last_buf only on the main request.  It discards
         * the request body first, which every caller has read or
         * discarded already.
         */

        ct.data = (u_char *) type;
        ct.len = len;

        ngx_memzero(&cv, sizeof(ngx_http_complex_value_t));
        cv.value.data = b->pos;
        cv.value.len = b->last - b->pos;

        return ngx_http_send_response(r, status, &ct, &cv);
    }

    /*
     * A type with parameters ("text/xml; charset=utf-8"): here, not with
     * ngx_http_send_response(), which counts them in content_type_len,
     * the part of the type that gzip_types, sub_filter_types and
     * charset_types match: no such type would match it any more.
     */

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;
    r->headers_out.content_type.data = (u_char *) type;
    r->headers_out.content_type.len = len;
    r->headers_out.content_type_len = semicolon - (u_char *) type;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/*
 * A Bulk API 1.0 error of the module's own, in the shape Salesforce gives
 * Bulk clients: XML, or JSON when the request's body is JSON (a JSON
 * job).  "code" is the exceptionCode, "message" the exceptionMessage; the
 * message never holds a secret.
 */

ngx_int_t
ngx_http_sf_oauth_send_bulk_error(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *code, ngx_str_t *message)
{
    u_char      *p;
    size_t       len;
    ngx_buf_t   *b;
    ngx_uint_t   json;

    static u_char  xml_start[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
        "<error xmlns=\"http://www.force.com/2009/06/asyncapi/dataload\">"
        "<exceptionCode>";
    static u_char  xml_middle[] = "</exceptionCode><exceptionMessage>";
    static u_char  xml_end[] = "</exceptionMessage></error>\n";

    static u_char  json_start[] = "{\"exceptionCode\":\"";
    static u_char  json_middle[] = "\",\"exceptionMessage\":\"";
    static u_char  json_end[] = "\"}\n";

    json = r->headers_in.content_type
           && ngx_strlcasestrn(r->headers_in.content_type->value.data,
                               r->headers_in.content_type->value.data
                               + r->headers_in.content_type->value.len,
                               (u_char *) "json", sizeof("json") - 1 - 1)
              != NULL;

    if (json) {
        len = sizeof(json_start) - 1 + code->len + sizeof(json_middle) - 1
              + message->len
              + ngx_escape_json(NULL, message->data, message->len)
              + sizeof(json_end) - 1;

    } else {
        len = sizeof(xml_start) - 1 + code->len + sizeof(xml_middle) - 1
              + message->len
              + ngx_escape_html(NULL, message->data, message->len)
              + sizeof(xml_end) - 1;
    }

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (json) {
        p = ngx_cpymem(b->pos, json_start, sizeof(json_start) - 1);
        p = ngx_cpymem(p, code->data, code->len);
        p = ngx_cpymem(p, json_middle, sizeof(json_middle) - 1);
        p = (u_char *) ngx_escape_json(p, message->data, message->len);
        b->last = ngx_cpymem(p, json_end, sizeof(json_end) - 1);

        return ngx_http_sf_oauth_send(r, status, "application/json", b);
    }

    p = ngx_cpymem(b->pos, xml_start, sizeof(xml_start) - 1);
    p = ngx_cpymem(p, code->data, code->len);
    p = ngx_cpymem(p, xml_middle, sizeof(xml_middle) - 1);
    p = (u_char *) ngx_escape_html(p, message->data, message->len);
    b->last = ngx_cpymem(p, xml_end, sizeof(xml_end) - 1);

    return ngx_http_sf_oauth_send(r, status, "application/xml; charset=UTF-8",
                                  b);
}
