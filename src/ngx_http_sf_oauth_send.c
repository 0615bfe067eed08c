
/*
 * A response that the module makes itself, sent whole.
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
    size_t       len;
    u_char      *semicolon;
    ngx_int_t    rc;
    ngx_chain_t  out;

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    len = ngx_strlen(type);
    semicolon = ngx_strlchr((u_char *) type, (u_char *) type + len, ';');

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;
    r->headers_out.content_type.data = (u_char *) type;
    r->headers_out.content_type.len = len;
    r->headers_out.content_type_len = semicolon
                                      ? (size_t) (semicolon - (u_char *) type)
                                      : len;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}
