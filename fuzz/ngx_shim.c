
/*
 * A stand-in for the few nginx core functions that the parser and the
 * state file codec call, so that they build into libFuzzer targets
 * without an nginx binary.  Pools here are plain lists of malloc() blocks,
 * which lets AddressSanitizer see every allocation on its own.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_sf_oauth.h"

#include <openssl/evp.h>


typedef struct {
    ngx_pool_t   pool;
    void       **blocks;
    size_t       n;
    size_t       size;
} shim_pool_t;


ngx_pool_t *
ngx_create_pool(size_t size, ngx_log_t *log)
{
    shim_pool_t  *p;

    p = calloc(1, sizeof(shim_pool_t));
    if (p) {
        p->pool.log = log;
    }

    return (ngx_pool_t *) p;
}


void
ngx_destroy_pool(ngx_pool_t *pool)
{
    size_t        i;
    shim_pool_t  *p = (shim_pool_t *) pool;

    for (i = 0; i < p->n; i++) {
        free(p->blocks[i]);
    }

    free(p->blocks);
    free(p);
}


void *
ngx_pnalloc(ngx_pool_t *pool, size_t size)
{
    void         *m, **b;
    shim_pool_t  *p = (shim_pool_t *) pool;

    if (p->n == p->size) {
        b = realloc(p->blocks, (p->size * 2 + 8) * sizeof(void *));
        if (b == NULL) {
            return NULL;
        }

        p->blocks = b;
        p->size = p->size * 2 + 8;
    }

    m = malloc(size ? size : 1);
    if (m) {
        p->blocks[p->n++] = m;
    }

    return m;
}


void *
ngx_palloc(ngx_pool_t *pool, size_t size)
{
    return ngx_pnalloc(pool, size);
}


void *
ngx_pcalloc(ngx_pool_t *pool, size_t size)
{
    void  *m;

    m = ngx_pnalloc(pool, size);
    if (m) {
        memset(m, 0, size);
    }

    return m;
}


void *
ngx_alloc(size_t size, ngx_log_t *log)
{
    return malloc(size);
}


void
ngx_explicit_memzero(void *buf, size_t n)
{
    memset(buf, 0, n);
    __asm__ __volatile__("" : : "r" (buf) : "memory");
}


void ngx_cdecl
ngx_log_error_core(ngx_uint_t level, ngx_log_t *log, ngx_err_t err,
    const char *fmt, ...)
{
}


/* the formats the parsers use: %l %d %c %s %*s %V %ui %uz %% */

u_char *
ngx_vslprintf(u_char *buf, u_char *last, const char *fmt, va_list args)
{
    char        num[32];
    size_t      len;
    u_char     *s;
    ngx_str_t  *v;

    while (*fmt && buf < last) {

        if (*fmt != '%') {
            *buf++ = *fmt++;
            continue;
        }

        fmt++;
        len = (size_t) -1;
        s = NULL;

        if (*fmt == '*') {
            len = va_arg(args, size_t);
            fmt++;
        }

        switch (*fmt) {

        case 's':
            s = va_arg(args, u_char *);
            if (len == (size_t) -1) {
                len = strlen((char *) s);
            }
            break;

        case 'V':
            v = va_arg(args, ngx_str_t *);
            s = v->data;
            len = v->len;
            break;

        case 'l':
            len = snprintf(num, sizeof(num), "%ld", va_arg(args, long));
            s = (u_char *) num;
            break;

        case 'd':
            len = snprintf(num, sizeof(num), "%d", va_arg(args, int));
            s = (u_char *) num;
            break;

        case 'c':
            num[0] = (char) va_arg(args, int);
            len = 1;
            s = (u_char *) num;
            break;

        case 'u':
            fmt++;
            len = snprintf(num, sizeof(num), "%lu",
                           (unsigned long) va_arg(args, ngx_uint_t));
            s = (u_char *) num;
            break;

        default:
            s = (u_char *) "%";
            len = 1;
            break;
        }

        fmt++;

        while (len-- && buf < last) {
            *buf++ = *s++;
        }
    }

    return buf;
}


u_char * ngx_cdecl
ngx_slprintf(u_char *buf, u_char *last, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;

    va_start(args, fmt);
    p = ngx_vslprintf(buf, last, fmt, args);
    va_end(args);

    return p;
}


u_char * ngx_cdecl
ngx_sprintf(u_char *buf, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;

    va_start(args, fmt);
    p = ngx_vslprintf(buf, (void *) -1, fmt, args);
    va_end(args);

    return p;
}


u_char *
ngx_strlcasestrn(u_char *s1, u_char *last, u_char *s2, size_t n)
{
    size_t  i;

    n++;

    for ( /* void */ ; s1 + n <= last; s1++) {
        for (i = 0; i < n; i++) {
            if (tolower(s1[i]) != tolower(s2[i])) {
                break;
            }
        }

        if (i == n) {
            return s1;
        }
    }

    return NULL;
}


ngx_int_t
ngx_strncasecmp(u_char *s1, u_char *s2, size_t n)
{
    return strncasecmp((char *) s1, (char *) s2, n);
}


ngx_int_t
ngx_hextoi(u_char *line, size_t n)
{
    u_char     c;
    ngx_int_t  value;

    if (n == 0) {
        return NGX_ERROR;
    }

    for (value = 0; n--; line++) {
        c = (u_char) tolower(*line);

        if (c >= '0' && c <= '9') {
            value = value * 16 + (c - '0');

        } else if (c >= 'a' && c <= 'f') {
            value = value * 16 + (c - 'a' + 10);

        } else {
            return NGX_ERROR;
        }
    }

    return value;
}


u_char *
ngx_hex_dump(u_char *dst, u_char *src, size_t len)
{
    static const char  hex[] = "0123456789abcdef";

    while (len--) {
        *dst++ = hex[*src >> 4];
        *dst++ = hex[*src++ & 0xf];
    }

    return dst;
}


void
ngx_http_sf_oauth_redact_fingerprint(u_char *dst, u_char *data, size_t len)
{
    u_char        md[EVP_MAX_MD_SIZE];
    unsigned int  n;

    EVP_Digest(data, len, md, &n, EVP_sha256(), NULL);
    ngx_hex_dump(dst, md, NGX_HTTP_SF_OAUTH_FP_LEN / 2);
}


/*
 * What the SOAP envelope rewriter and the error-body verdict call besides:
 * arrays, buffers, chains, HTML escaping, a file read for bodies in a
 * temp file, and the two response functions of the module's SOAP fault.
 */


void *
ngx_array_push(ngx_array_t *a)
{
    void  *elt, *new;

    if (a->nelts == a->nalloc) {
        /* always a new block, so that ASan sees a stale pointer */
        new = ngx_palloc(a->pool, 2 * a->size * (a->nalloc ? a->nalloc : 1));
        if (new == NULL) {
            return NULL;
        }

        memcpy(new, a->elts, a->size * a->nalloc);
        a->elts = new;
        a->nalloc = a->nalloc ? 2 * a->nalloc : 1;
    }

    elt = (u_char *) a->elts + a->size * a->nelts;
    a->nelts++;

    return elt;
}


void *
ngx_array_push_n(ngx_array_t *a, ngx_uint_t n)
{
    void        *elt;
    ngx_uint_t   i;

    /* one at a time: each push may move the array, as ASan should see */

    for (i = 0; i < n; i++) {
        if (ngx_array_push(a) == NULL) {
            a->nelts -= i;
            return NULL;
        }
    }

    elt = (u_char *) a->elts + a->size * (a->nelts - n);

    return elt;
}


u_char *
ngx_pstrdup(ngx_pool_t *pool, ngx_str_t *src)
{
    u_char  *dst;

    dst = ngx_pnalloc(pool, src->len);
    if (dst == NULL) {
        return NULL;
    }

    memcpy(dst, src->data, src->len);

    return dst;
}


ngx_array_t *
ngx_array_create(ngx_pool_t *p, ngx_uint_t n, size_t size)
{
    ngx_array_t  *a;

    a = ngx_palloc(p, sizeof(ngx_array_t));
    if (a == NULL) {
        return NULL;
    }

    if (ngx_array_init(a, p, n, size) != NGX_OK) {
        return NULL;
    }

    return a;
}


ngx_buf_t *
ngx_create_temp_buf(ngx_pool_t *pool, size_t size)
{
    ngx_buf_t  *b;

    b = ngx_calloc_buf(pool);
    if (b == NULL) {
        return NULL;
    }

    b->start = ngx_palloc(pool, size);
    if (b->start == NULL) {
        return NULL;
    }

    b->pos = b->start;
    b->last = b->start;
    b->end = b->last + size;
    b->temporary = 1;

    return b;
}


ngx_chain_t *
ngx_alloc_chain_link(ngx_pool_t *pool)
{
    return ngx_palloc(pool, sizeof(ngx_chain_t));
}


/* nginx's own, from src/core/ngx_string.c */

uintptr_t
ngx_escape_html(u_char *dst, u_char *src, size_t size)
{
    u_char      ch;
    ngx_uint_t  len;

    if (dst == NULL) {

        len = 0;

        while (size) {
            switch (*src++) {

            case '<':
                len += sizeof("&lt;") - 2;
                break;

            case '>':
                len += sizeof("&gt;") - 2;
                break;

            case '&':
                len += sizeof("&amp;") - 2;
                break;

            case '"':
                len += sizeof("&quot;") - 2;
                break;

            default:
                break;
            }
            size--;
        }

        return (uintptr_t) len;
    }

    while (size) {
        ch = *src++;

        switch (ch) {

        case '<':
            *dst++ = '&'; *dst++ = 'l'; *dst++ = 't'; *dst++ = ';';
            break;

        case '>':
            *dst++ = '&'; *dst++ = 'g'; *dst++ = 't'; *dst++ = ';';
            break;

        case '&':
            *dst++ = '&'; *dst++ = 'a'; *dst++ = 'm'; *dst++ = 'p';
            *dst++ = ';';
            break;

        case '"':
            *dst++ = '&'; *dst++ = 'q'; *dst++ = 'u'; *dst++ = 'o';
            *dst++ = 't'; *dst++ = ';';
            break;

        default:
            *dst++ = ch;
            break;
        }
        size--;
    }

    return (uintptr_t) dst;
}


/* a body in a temp file: the fuzz targets put one in a memfd */

ssize_t
ngx_read_file(ngx_file_t *file, u_char *buf, size_t size, off_t offset)
{
    ssize_t  n;

    n = pread(file->fd, buf, size, offset);
    if (n == -1) {
        return NGX_ERROR;
    }

    file->offset += n;

    return n;
}


ngx_int_t
ngx_http_send_header(ngx_http_request_t *r)
{
    return NGX_OK;
}


/*
 * nginx's, for ngx_http_sf_oauth_send(): the body as is, to
 * ngx_http_output_filter() below
 */

ngx_int_t
ngx_http_send_response(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *ct, ngx_http_complex_value_t *cv)
{
    ngx_buf_t    b;
    ngx_chain_t  out;

    ngx_memzero(&b, sizeof(ngx_buf_t));

    b.pos = cv->value.data;
    b.last = cv->value.data + cv->value.len;
    b.memory = 1;

    out.buf = &b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/*
 * nginx's ngx_parse_url(), for ngx_http_sf_oauth_parse_url(): an
 * authority only ("host[:port]" or "[IPv6][:port]"), never resolved, with
 * nginx's error texts
 */

ngx_int_t
ngx_parse_url(ngx_pool_t *pool, ngx_url_t *u)
{
    char        s6[46];
    u_char     *host, *p, *last, *port, a[16];
    ngx_int_t   n;

    host = u->url.data;
    last = host + u->url.len;
    port = NULL;

    if (host < last && *host == '[') {
        p = ngx_strlchr(host, last, ']');

        if (p == NULL || (p + 1 < last && p[1] != ':')) {
            u->err = "invalid host";
            return NGX_ERROR;
        }

        if (p == host + 1) {
            u->err = "no host";
            return NGX_ERROR;
        }

        if (p - host - 1 > 45) {
            u->err = "invalid IPv6 address";
            return NGX_ERROR;
        }

        ngx_memcpy(s6, host + 1, p - host - 1);
        s6[p - host - 1] = '\0';

        if (inet_pton(AF_INET6, s6, a) != 1) {
            u->err = "invalid IPv6 address";
            return NGX_ERROR;
        }

        u->host.data = host;
        u->host.len = p + 1 - host;
        port = (p + 1 < last) ? p + 2 : NULL;

    } else {
        p = ngx_strlchr(host, last, ':');

        u->host.data = host;
        u->host.len = (p ? p : last) - host;
        port = p ? p + 1 : NULL;

        if (u->host.len == 0 && port == NULL) {
            u->err = "no host";
            return NGX_ERROR;
        }
    }

    if (port) {
        n = ngx_atoi(port, last - port);

        if (n < 1 || n > 65535) {
            u->err = "invalid port";
            return NGX_ERROR;
        }

        u->port = (in_port_t) n;

    } else {
        u->port = u->default_port;
    }

    if (u->host.len == 0) {
        u->err = "no host";
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_int_t
ngx_atoi(u_char *line, size_t n)
{
    ngx_int_t  value;

    if (n == 0) {
        return NGX_ERROR;
    }

    for (value = 0; n--; line++) {
        if (*line < '0' || *line > '9' || value > 100000) {
            return NGX_ERROR;
        }

        value = value * 10 + (*line - '0');
    }

    return value;
}


/*
 * What the module last sent as a response body, copied (the chain may be
 * on the caller's stack), for a target to check; the target frees it.
 */
u_char  *ngx_shim_output;
size_t   ngx_shim_output_len;


ngx_int_t
ngx_http_output_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    u_char       *p;
    size_t        len;
    ngx_chain_t  *cl;

    len = 0;

    for (cl = in; cl; cl = cl->next) {
        len += ngx_buf_size(cl->buf);
    }

    p = realloc(ngx_shim_output, ngx_shim_output_len + len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_shim_output = p;

    for (cl = in; cl; cl = cl->next) {
        if (ngx_buf_in_memory(cl->buf)) {
            memcpy(p + ngx_shim_output_len, cl->buf->pos,
                   cl->buf->last - cl->buf->pos);
            ngx_shim_output_len += cl->buf->last - cl->buf->pos;
        }
    }

    return NGX_OK;
}


/*
 * inflate.c, answer.c's login answer and send.c's Bulk error need these;
 * no target calls them
 */

ngx_module_t  ngx_http_core_module;
ngx_module_t  ngx_http_sf_oauth_module;


ngx_pool_cleanup_t *
ngx_pool_cleanup_add(ngx_pool_t *p, size_t size)
{
    return NULL;
}


uintptr_t
ngx_escape_json(u_char *dst, u_char *src, size_t size)
{
    abort();
}


ssize_t
ngx_write_chain_to_temp_file(ngx_temp_file_t *tf, ngx_chain_t *chain)
{
    return NGX_ERROR;
}


ngx_int_t
ngx_strcasecmp(u_char *s1, u_char *s2)
{
    return strcasecmp((char *) s1, (char *) s2);
}
