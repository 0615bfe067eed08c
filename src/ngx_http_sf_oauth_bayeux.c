
/*
 * The Streaming API (CometD, Bayeux over long polling, POST /cometd/V):
 * which requests' answers may say the session is dead, and what they say.
 * Salesforce answers a dead session with HTTP 200: the error is inside the
 * Bayeux message.
 *
 *   /meta/handshake  "error":"403::Handshake denied" with
 *                    "ext":{"sfdc":{"failureReason":"401::..."}}, or an
 *                    "error" that starts with "401::": the handshake is
 *                    replayed after a refresh, as a REST 401 is;
 *   /meta/connect    an "error" that starts with "401::" ("401::
 *                    Authentication invalid", "401::Request requires
 *                    authentication"): the client's session on the server
 *                    is gone, so a replay cannot help.  The message's
 *                    "advice" becomes {"reconnect":"handshake",
 *                    "interval":0}, and every Bayeux client handshakes
 *                    again at once, through the module, with the new
 *                    token, and subscribes again.
 *
 * Any other answer passes as it is: "403::Unknown client", a handshake
 * refused for another reason (an org's daily event limit), a body that is
 * not JSON or longer than NGX_HTTP_SF_OAUTH_BAYEUX_MAX.  Here a refresh
 * is the action, so what cannot be read is not a dead session.
 *
 * The JSON is read by a scanner of its own, with no allocation: it
 * checks the whole body's structure (strings, nesting up to
 * NGX_HTTP_SF_OAUTH_BAYEUX_DEPTH, numbers and literals) and finds the
 * byte spans of members, so that the advice is replaced and every other
 * byte stays as Salesforce sent it.  Names and values are compared as
 * they are written: "\/" is "/", any other escape is no match.
 */


#include "ngx_http_sf_oauth.h"


#define NGX_HTTP_SF_OAUTH_BAYEUX_DEPTH  32


static ngx_uint_t ngx_http_sf_oauth_bayeux_channel(u_char *p, u_char *last);
static ngx_uint_t ngx_http_sf_oauth_bayeux_sent(u_char *msg, u_char *last);
static ngx_int_t ngx_http_sf_oauth_bayeux_message(ngx_uint_t channel,
    u_char *msg, u_char *last);
static ngx_int_t ngx_http_sf_oauth_bayeux_rewrite(ngx_pool_t *pool,
    u_char *body, size_t len, u_char *msg, u_char *last, ngx_str_t *out);
static u_char *ngx_http_sf_oauth_bayeux_space(u_char *p, u_char *last);
static u_char *ngx_http_sf_oauth_bayeux_skip(u_char *p, u_char *last,
    ngx_uint_t depth);
static u_char *ngx_http_sf_oauth_bayeux_member(u_char *p, u_char *last,
    const char *name, u_char **end);
static ngx_uint_t ngx_http_sf_oauth_bayeux_is(u_char *p, u_char *end,
    const char *s, ngx_uint_t prefix);


static u_char  ngx_http_sf_oauth_bayeux_advice[] =
    "{\"reconnect\":\"handshake\",\"interval\":0}";


/*
 * The channel of a request's messages that makes its answer a candidate:
 * /meta/handshake or /meta/connect, from the request body (a JSON array
 * of messages, or one message).  A body in a temp file, or longer than
 * NGX_HTTP_SF_OAUTH_BAYEUX_MAX, is no candidate: Bayeux requests are
 * short.
 */

ngx_uint_t
ngx_http_sf_oauth_bayeux_request(ngx_http_request_t *r)
{
    u_char       *p, *body;
    size_t        len;
    ngx_chain_t  *cl;

    if (r->method != NGX_HTTP_POST
        || r->request_body == NULL
        || r->request_body->bufs == NULL
        || r->request_body->temp_file)
    {
        return NGX_HTTP_SF_OAUTH_BAYEUX_NONE;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        if (cl->buf->in_file || !ngx_buf_in_memory(cl->buf)) {
            return NGX_HTTP_SF_OAUTH_BAYEUX_NONE;
        }

        len += cl->buf->last - cl->buf->pos;
    }

    if (len == 0 || len > NGX_HTTP_SF_OAUTH_BAYEUX_MAX) {
        return NGX_HTTP_SF_OAUTH_BAYEUX_NONE;
    }

    cl = r->request_body->bufs;

    if (cl->next == NULL) {
        return ngx_http_sf_oauth_bayeux_channel(cl->buf->pos, cl->buf->last);
    }

    body = ngx_pnalloc(r->pool, len);
    if (body == NULL) {
        return NGX_HTTP_SF_OAUTH_BAYEUX_NONE;
    }

    p = body;

    for ( /* void */ ; cl; cl = cl->next) {
        p = ngx_cpymem(p, cl->buf->pos, cl->buf->last - cl->buf->pos);
    }

    return ngx_http_sf_oauth_bayeux_channel(body, p);
}


static ngx_uint_t
ngx_http_sf_oauth_bayeux_channel(u_char *p, u_char *last)
{
    u_char      *end;
    ngx_uint_t   found, channel;

    p = ngx_http_sf_oauth_bayeux_space(p, last);
    end = ngx_http_sf_oauth_bayeux_skip(p, last, 0);

    if (end == NULL || ngx_http_sf_oauth_bayeux_space(end, last) != last) {
        return NGX_HTTP_SF_OAUTH_BAYEUX_NONE;
    }

    if (*p == '{') {
        return ngx_http_sf_oauth_bayeux_sent(p, last);
    }

    if (*p != '[') {
        return NGX_HTTP_SF_OAUTH_BAYEUX_NONE;
    }

    /* the array is checked whole: each element ends before its "]" */

    found = NGX_HTTP_SF_OAUTH_BAYEUX_NONE;

    p = ngx_http_sf_oauth_bayeux_space(p + 1, last);

    while (*p != ']') {
        end = ngx_http_sf_oauth_bayeux_skip(p, last, 1);

        if (*p == '{') {
            channel = ngx_http_sf_oauth_bayeux_sent(p, last);

            if (channel != NGX_HTTP_SF_OAUTH_BAYEUX_NONE) {
                found = channel;
            }
        }

        p = ngx_http_sf_oauth_bayeux_space(end, last);

        if (*p == ',') {
            p = ngx_http_sf_oauth_bayeux_space(p + 1, last);
        }
    }

    return found;
}


/* the channel of one message of a request, if it is a candidate's */

static ngx_uint_t
ngx_http_sf_oauth_bayeux_sent(u_char *msg, u_char *last)
{
    u_char  *v, *vend;

    v = ngx_http_sf_oauth_bayeux_member(msg, last, "channel", &vend);

    if (v == NULL) {
        return NGX_HTTP_SF_OAUTH_BAYEUX_NONE;
    }

    if (ngx_http_sf_oauth_bayeux_is(v, vend, "/meta/handshake", 0)) {
        return NGX_HTTP_SF_OAUTH_BAYEUX_HANDSHAKE;
    }

    if (ngx_http_sf_oauth_bayeux_is(v, vend, "/meta/connect", 0)) {
        return NGX_HTTP_SF_OAUTH_BAYEUX_CONNECT;
    }

    return NGX_HTTP_SF_OAUTH_BAYEUX_NONE;
}


/*
 * The verdict on a candidate's answer to a request of "channel", read
 * whole ("whole"): NGX_HTTP_SF_OAUTH_BAYEUX_PASS, _REPLAY (a handshake
 * refused for a dead session), or _RECONNECT with "out" the body with the
 * failed connect's advice replaced (allocated from "pool").
 */

ngx_int_t
ngx_http_sf_oauth_bayeux_verdict(ngx_pool_t *pool, ngx_uint_t channel,
    u_char *body, size_t len, ngx_uint_t whole, ngx_str_t *out)
{
    u_char     *p, *last, *end;
    ngx_int_t   rc;

    if (!whole || len == 0 || body == NULL) {
        return NGX_HTTP_SF_OAUTH_BAYEUX_PASS;
    }

    last = body + len;

    p = ngx_http_sf_oauth_bayeux_space(body, last);
    end = ngx_http_sf_oauth_bayeux_skip(p, last, 0);

    if (end == NULL || ngx_http_sf_oauth_bayeux_space(end, last) != last) {
        return NGX_HTTP_SF_OAUTH_BAYEUX_PASS;
    }

    if (*p == '{') {
        rc = ngx_http_sf_oauth_bayeux_message(channel, p, last);
        goto found;
    }

    if (*p != '[') {
        return NGX_HTTP_SF_OAUTH_BAYEUX_PASS;
    }

    p = ngx_http_sf_oauth_bayeux_space(p + 1, last);

    while (*p != ']') {
        end = ngx_http_sf_oauth_bayeux_skip(p, last, 1);

        if (*p == '{') {
            rc = ngx_http_sf_oauth_bayeux_message(channel, p, last);

            if (rc != NGX_HTTP_SF_OAUTH_BAYEUX_PASS) {
                goto found;
            }
        }

        p = ngx_http_sf_oauth_bayeux_space(end, last);

        if (*p == ',') {
            p = ngx_http_sf_oauth_bayeux_space(p + 1, last);
        }
    }

    return NGX_HTTP_SF_OAUTH_BAYEUX_PASS;

found:

    if (rc == NGX_HTTP_SF_OAUTH_BAYEUX_RECONNECT
        && ngx_http_sf_oauth_bayeux_rewrite(pool, body, len, p, last, out)
           != NGX_OK)
    {
        return NGX_HTTP_SF_OAUTH_BAYEUX_PASS;
    }

    return rc;
}


/* one message of the answer, at "msg": what it says about the session */

static ngx_int_t
ngx_http_sf_oauth_bayeux_message(ngx_uint_t channel, u_char *msg,
    u_char *last)
{
    u_char  *v, *vend, *ext, *end;

    v = ngx_http_sf_oauth_bayeux_member(msg, last, "channel", &vend);

    if (v == NULL
        || !ngx_http_sf_oauth_bayeux_is(v, vend,
                                        channel
                                        == NGX_HTTP_SF_OAUTH_BAYEUX_HANDSHAKE
                                        ? "/meta/handshake"
                                        : "/meta/connect", 0))
    {
        return NGX_HTTP_SF_OAUTH_BAYEUX_PASS;
    }

    v = ngx_http_sf_oauth_bayeux_member(msg, last, "successful", &vend);

    if (v && vend - v == 4 && ngx_strncmp(v, "true", 4) == 0) {
        return NGX_HTTP_SF_OAUTH_BAYEUX_PASS;
    }

    v = ngx_http_sf_oauth_bayeux_member(msg, last, "error", &vend);

    if (v == NULL) {
        return NGX_HTTP_SF_OAUTH_BAYEUX_PASS;
    }

    if (ngx_http_sf_oauth_bayeux_is(v, vend, "401::", 1)) {
        return channel == NGX_HTTP_SF_OAUTH_BAYEUX_HANDSHAKE
               ? NGX_HTTP_SF_OAUTH_BAYEUX_REPLAY
               : NGX_HTTP_SF_OAUTH_BAYEUX_RECONNECT;
    }

    if (channel != NGX_HTTP_SF_OAUTH_BAYEUX_HANDSHAKE
        || !ngx_http_sf_oauth_bayeux_is(v, vend, "403::Handshake denied", 0))
    {
        return NGX_HTTP_SF_OAUTH_BAYEUX_PASS;
    }

    /* "ext":{"sfdc":{"failureReason":"401::Authentication invalid"}} */

    ext = ngx_http_sf_oauth_bayeux_member(msg, last, "ext", &end);

    if (ext && *ext == '{') {
        ext = ngx_http_sf_oauth_bayeux_member(ext, last, "sfdc", &end);

        if (ext && *ext == '{') {
            v = ngx_http_sf_oauth_bayeux_member(ext, last, "failureReason",
                                                &vend);

            if (v && ngx_http_sf_oauth_bayeux_is(v, vend, "401::", 1)) {
                return NGX_HTTP_SF_OAUTH_BAYEUX_REPLAY;
            }
        }
    }

    return NGX_HTTP_SF_OAUTH_BAYEUX_PASS;
}


/*
 * The body with the advice of the message at "msg" replaced, or added
 * first in the message when it had none: every other byte as it was.
 */

static ngx_int_t
ngx_http_sf_oauth_bayeux_rewrite(ngx_pool_t *pool, u_char *body, size_t len,
    u_char *msg, u_char *last, ngx_str_t *out)
{
    u_char  *p, *v, *vend;
    size_t   advice;

    advice = sizeof(ngx_http_sf_oauth_bayeux_advice) - 1;

    v = ngx_http_sf_oauth_bayeux_member(msg, last, "advice", &vend);

    if (v == NULL) {
        /* {"advice":ADVICE, ... the message's members */
        v = msg + 1;
        vend = msg + 1;
    }

    out->data = ngx_pnalloc(pool, len + advice + sizeof("\"advice\":,") - 1);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(out->data, body, v - body);

    if (v == vend) {
        p = ngx_cpymem(p, "\"advice\":", sizeof("\"advice\":") - 1);
    }

    p = ngx_cpymem(p, ngx_http_sf_oauth_bayeux_advice, advice);

    if (v == vend) {
        *p++ = ',';
    }

    p = ngx_cpymem(p, vend, last - vend);

    out->len = p - out->data;

    return NGX_OK;
}


static u_char *
ngx_http_sf_oauth_bayeux_space(u_char *p, u_char *last)
{
    while (p < last && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
    {
        p++;
    }

    return p;
}


/*
 * Past the JSON value that starts at "p", or NULL: not JSON, cut short,
 * or nested deeper than NGX_HTTP_SF_OAUTH_BAYEUX_DEPTH.
 */

static u_char *
ngx_http_sf_oauth_bayeux_skip(u_char *p, u_char *last, ngx_uint_t depth)
{
    u_char  *start, close;

    if (p >= last) {
        return NULL;
    }

    switch (*p) {

    case '"':

        for (p++; p < last; p++) {

            if (*p == '\\') {
                if (++p == last) {
                    return NULL;
                }

                continue;
            }

            if (*p == '"') {
                return p + 1;
            }

            if (*p < 0x20) {
                return NULL;
            }
        }

        return NULL;

    case '{':
    case '[':

        if (depth >= NGX_HTTP_SF_OAUTH_BAYEUX_DEPTH) {
            return NULL;
        }

        close = (*p == '{') ? '}' : ']';

        p = ngx_http_sf_oauth_bayeux_space(p + 1, last);

        if (p < last && *p == close) {
            return p + 1;
        }

        for ( ;; ) {

            if (close == '}') {
                if (p == last || *p != '"') {
                    return NULL;
                }

                p = ngx_http_sf_oauth_bayeux_skip(p, last, depth + 1);
                if (p == NULL) {
                    return NULL;
                }

                p = ngx_http_sf_oauth_bayeux_space(p, last);

                if (p == last || *p != ':') {
                    return NULL;
                }

                p = ngx_http_sf_oauth_bayeux_space(p + 1, last);
            }

            p = ngx_http_sf_oauth_bayeux_skip(p, last, depth + 1);
            if (p == NULL) {
                return NULL;
            }

            p = ngx_http_sf_oauth_bayeux_space(p, last);

            if (p == last) {
                return NULL;
            }

            if (*p == close) {
                return p + 1;
            }

            if (*p != ',') {
                return NULL;
            }

            p = ngx_http_sf_oauth_bayeux_space(p + 1, last);
        }

    default:

        /* a number, true, false or null */

        start = p;

        while (p < last
               && ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z')
                   || *p == '-' || *p == '+' || *p == '.' || *p == 'E'))
        {
            p++;
        }

        return (p == start) ? NULL : p;
    }
}


/*
 * The value of the member "name" of the object at "p" (checked by
 * ngx_http_sf_oauth_bayeux_skip already), with *end past it; NULL when
 * the object has no such member.  The first one, if the name repeats.
 */

static u_char *
ngx_http_sf_oauth_bayeux_member(u_char *p, u_char *last, const char *name,
    u_char **end)
{
    u_char  *key, *key_end, *v, *vend;

    p = ngx_http_sf_oauth_bayeux_space(p + 1, last);

    while (p < last && *p == '"') {
        key = p;
        key_end = ngx_http_sf_oauth_bayeux_skip(p, last, 1);
        if (key_end == NULL) {
            return NULL;
        }

        p = ngx_http_sf_oauth_bayeux_space(key_end, last);
        v = ngx_http_sf_oauth_bayeux_space(p + 1, last);
        vend = ngx_http_sf_oauth_bayeux_skip(v, last, 1);
        if (vend == NULL) {
            return NULL;
        }

        if (ngx_http_sf_oauth_bayeux_is(key, key_end, name, 0)) {
            *end = vend;
            return v;
        }

        p = ngx_http_sf_oauth_bayeux_space(vend, last);

        if (p < last && *p == ',') {
            p = ngx_http_sf_oauth_bayeux_space(p + 1, last);
        }
    }

    return NULL;
}


/*
 * Whether the JSON string from "p" to "end" (its quotes included) is "s",
 * or, with "prefix", starts with it.  "\/" reads as "/"; any other escape
 * is no match.
 */

static ngx_uint_t
ngx_http_sf_oauth_bayeux_is(u_char *p, u_char *end, const char *s,
    ngx_uint_t prefix)
{
    u_char  c;

    if (end - p < 2 || *p != '"') {
        return 0;
    }

    end--;

    for (p++; p < end; p++, s++) {
        c = *p;

        if (c == '\\') {
            if (p + 1 == end || p[1] != '/') {
                return 0;
            }

            c = *++p;
        }

        if (*s == '\0') {
            return prefix;
        }

        if (c != (u_char) *s) {
            return 0;
        }
    }

    return *s == '\0';
}
