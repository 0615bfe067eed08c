
/*
 * The module's one URL scanner, on nginx's ngx_parse_url(): token_url when
 * the configuration is read, and the URLs of the token endpoint's answers
 * (see ngx_http_sf_oauth_parse.c for what they may hold).
 */


#include "ngx_http_sf_oauth.h"


/*
 * The one scanner of URLs, for token_url at configuration time and for
 * the URLs of the token endpoint's answers: "http://" or "https://" (in
 * any case), then the authority, up to the first "/", "?" or "#", split
 * with nginx's ngx_parse_url() into a host (an IPv6 address in brackets
 * is checked as one) and a port of 1 to 65535, and the rest.  Nothing is
 * resolved (no_resolve): this runs in a worker too, for each token
 * answer.  NGX_DECLINED: not an http or https URL; NGX_ERROR: u->err says
 * why, as ngx_parse_url() words it (NULL when out of memory).
 */

ngx_int_t
ngx_http_sf_oauth_url_parse(ngx_pool_t *pool, ngx_str_t *url,
    ngx_http_sf_oauth_url_t *u)
{
    u_char     *p, *last;
    ngx_url_t   pu;

    ngx_memzero(u, sizeof(ngx_http_sf_oauth_url_t));
    ngx_memzero(&pu, sizeof(ngx_url_t));

    if (url->len > 8
        && ngx_strncasecmp(url->data, (u_char *) "https://", 8) == 0)
    {
        pu.url.data = url->data + 8;
        pu.default_port = 443;

    } else if (url->len > 7
               && ngx_strncasecmp(url->data, (u_char *) "http://", 7) == 0)
    {
        pu.url.data = url->data + 7;
        pu.default_port = 80;

    } else {
        return NGX_DECLINED;
    }

    last = url->data + url->len;

    for (p = pu.url.data; p < last && *p != '/' && *p != '?' && *p != '#';
         p++)
    {
        /* void */
    }

    pu.url.len = p - pu.url.data;
    pu.no_resolve = 1;

    u->origin.data = url->data;
    u->origin.len = p - url->data;
    u->uri.data = p;
    u->uri.len = last - p;

    if (pu.url.len >= 5
        && ngx_strncasecmp(pu.url.data, (u_char *) "unix:", 5) == 0)
    {
        /* ngx_parse_url() would take a unix socket's path for the host */
        u->err = "it names a unix socket, not a host";
        return NGX_ERROR;
    }

    if (ngx_parse_url(pool, &pu) != NGX_OK) {
        u->err = pu.err;
        return NGX_ERROR;
    }

    if (pu.host.len == 0) {
        u->err = "no host";
        return NGX_ERROR;
    }

    u->host = pu.host;
    u->port = pu.port;

    return NGX_OK;
}
