
/*
 * The response filter.  Once a response header comes, the upstream request
 * has long been built: the token leaves the request's headers, so that
 * variables evaluated from here on (add_header, the access log) show the
 * client's own Authorization and never the token.
 *
 * The module is an HTTP_FILTER module without ngx_module_order, so this
 * header filter runs before add_header, gzip, the chunked filter and the
 * header writer: the place where the 401 replay (next issue) will hold a
 * response that no client byte has seen yet.
 */


#include "ngx_http_sf_oauth.h"


static ngx_int_t ngx_http_sf_oauth_header_filter(ngx_http_request_t *r);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;


ngx_int_t
ngx_http_sf_oauth_filter_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_sf_oauth_header_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_sf_oauth_header_filter(ngx_http_request_t *r)
{
    if (r == r->main) {
        ngx_http_sf_oauth_hide_authorization(r);
    }

    return ngx_http_next_header_filter(r);
}
