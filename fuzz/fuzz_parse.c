
/*
 * libFuzzer target: the token endpoint's answer.  The first byte picks
 * the HTTP status, the rest is the body.  Whatever the body, the parser
 * must give either a token that fits a header or an error text.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_sf_oauth.h"


static const long  statuses[] = { 200, 400, 401, 503, 302, 200, 200, 500 };


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                     *body;
    ngx_pool_t                 *pool;
    ngx_http_sf_oauth_token_t   tok;

    if (size == 0) {
        return 0;
    }

    pool = ngx_create_pool(4096, NULL);

    /* a block of its own, so that a read past the body is caught */
    body = malloc(size - 1 ? size - 1 : 1);
    memcpy(body, data + 1, size - 1);

    ngx_http_sf_oauth_parse_response(pool, statuses[data[0] % 8], body,
                                     size - 1, &tok);

    if (tok.ok) {
        if (tok.access_token.len == 0
            || tok.access_token.len > NGX_HTTP_SF_OAUTH_TOKEN_MAX
            || ngx_http_sf_oauth_parse_check_token(&tok.access_token) != NGX_OK
            || tok.instance_url.len < 8
            || tok.instance_url.len > NGX_HTTP_SF_OAUTH_URL_MAX
            || tok.refresh_token.len > NGX_HTTP_SF_OAUTH_REFRESH_MAX)
        {
            abort();
        }

    } else if (tok.error.len == 0 || tok.hint.len == 0) {
        abort();
    }

    free(body);
    ngx_destroy_pool(pool);

    return 0;
}
