
/*
 * libFuzzer target: the verdict on an error response's body, and the
 * request URI's kind and SOAP namespace.  Byte 0 picks the API (bits 0-1:
 * REST, SOAP, Bulk 1.0, REST), the status (bits 2-3: 401, 500, 400, 200)
 * and whether the body was read whole (bit 4); the rest is the body, and
 * also the URI.  Whatever the body, the verdict is 0 or 1, and a cut 401
 * is a dead session.  (Only candidates are ever asked: the verdict itself
 * does not look at the status of a SOAP or Bulk answer.)
 *
 * The same bytes are a CometD answer to a handshake or (bit 5) a connect,
 * and a CometD request body: the Bayeux verdict is one of its three, a
 * cut answer passes, and a rewritten connect holds the new advice and
 * every byte of the answer around it; the request's channel is one of
 * its three.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_sf_oauth.h"

#include <libxml/parser.h>


static const ngx_uint_t  kinds[] = {
    NGX_HTTP_SF_OAUTH_REST, NGX_HTTP_SF_OAUTH_SOAP, NGX_HTTP_SF_OAUTH_BULK,
    NGX_HTTP_SF_OAUTH_REST
};

static const ngx_uint_t  statuses[] = { 401, 500, 400, 200 };


static void
silent(void *ctx, const char *msg, ...)
{
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                    *body;
    size_t                     len;
    ngx_int_t                  dead;
    ngx_buf_t                  b;
    ngx_str_t                  ns, out;
    ngx_uint_t                 kind, status, whole, k, channel;
    ngx_pool_t                *pool;
    ngx_chain_t                cl;
    ngx_http_request_t         r;
    ngx_http_request_body_t    rb;

    static const char  advice[] = "{\"reconnect\":\"handshake\","
                                  "\"interval\":0}";

    static int  inited;

    if (!inited) {
        ngx_http_sf_oauth_envelope_init();
        xmlSetGenericErrorFunc(NULL, silent);
        inited = 1;
    }

    if (size == 0) {
        return 0;
    }

    kind = kinds[data[0] & 3];
    status = statuses[(data[0] >> 2) & 3];
    whole = (data[0] >> 4) & 1;

    len = size - 1;

    /* a block of its own, so that a read past the body is caught */
    body = malloc(len ? len : 1);
    memcpy(body, data + 1, len);

    dead = ngx_http_sf_oauth_verdict(kind, status, body, len, whole);

    if (dead != 0 && dead != 1) {
        abort();
    }

    if (status == 401 && !whole && !dead) {
        abort();
    }

    /* the same bytes as a request URI */

    pool = ngx_create_pool(4096, NULL);

    ngx_memzero(&r, sizeof(ngx_http_request_t));
    r.pool = pool;
    r.uri.data = body;
    r.uri.len = len;

    k = ngx_http_sf_oauth_envelope_kind(&r);

    if (k != NGX_HTTP_SF_OAUTH_REST && k != NGX_HTTP_SF_OAUTH_SOAP
        && k != NGX_HTTP_SF_OAUTH_BULK && k != NGX_HTTP_SF_OAUTH_COMETD)
    {
        abort();
    }

    /* the same bytes as a CometD answer, and as its request */

    channel = ((data[0] >> 5) & 1) ? NGX_HTTP_SF_OAUTH_BAYEUX_CONNECT
                                   : NGX_HTTP_SF_OAUTH_BAYEUX_HANDSHAKE;

    dead = ngx_http_sf_oauth_bayeux_verdict(pool, channel, body, len, whole,
                                            &out);

    if (dead != NGX_HTTP_SF_OAUTH_BAYEUX_PASS
        && (!whole
            || (dead != NGX_HTTP_SF_OAUTH_BAYEUX_REPLAY
                && dead != NGX_HTTP_SF_OAUTH_BAYEUX_RECONNECT)
            || (dead == NGX_HTTP_SF_OAUTH_BAYEUX_REPLAY
                && channel != NGX_HTTP_SF_OAUTH_BAYEUX_HANDSHAKE)
            || (dead == NGX_HTTP_SF_OAUTH_BAYEUX_RECONNECT
                && channel != NGX_HTTP_SF_OAUTH_BAYEUX_CONNECT)))
    {
        abort();
    }

    if (dead == NGX_HTTP_SF_OAUTH_BAYEUX_RECONNECT) {
        /* the answer's first and last bytes stay, the advice is in */

        if (out.len <= sizeof(advice) - 1
            || ngx_strlcasestrn(out.data, out.data + out.len,
                                (u_char *) advice, sizeof(advice) - 1 - 1)
               == NULL
            || out.data[0] != body[0]
            || out.data[out.len - 1] != body[len - 1])
        {
            abort();
        }
    }

    b.pos = body;
    b.last = body + len;
    b.memory = 1;
    cl.buf = &b;
    cl.next = NULL;
    rb.bufs = &cl;
    r.request_body = &rb;
    r.method = NGX_HTTP_POST;

    k = ngx_http_sf_oauth_bayeux_request(&r);

    if (k != NGX_HTTP_SF_OAUTH_BAYEUX_NONE
        && k != NGX_HTTP_SF_OAUTH_BAYEUX_HANDSHAKE
        && k != NGX_HTTP_SF_OAUTH_BAYEUX_CONNECT)
    {
        abort();
    }

    ngx_http_sf_oauth_envelope_namespace(&r, &ns);

    if (ns.len
        && !(ns.len >= 4 && (ngx_strncmp(ns.data, "urn:", 4) == 0
                             || ngx_strncmp(ns.data, "http", 4) == 0)))
    {
        abort();
    }

    ngx_destroy_pool(pool);
    free(body);

    return 0;
}
