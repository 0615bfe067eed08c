
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


/* the formats the parser uses: %l %d %s %*s %V %ui %uz %% */

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
ngx_http_sf_oauth_fingerprint(u_char *dst, u_char *data, size_t len)
{
    u_char        md[EVP_MAX_MD_SIZE];
    unsigned int  n;

    EVP_Digest(data, len, md, &n, EVP_sha256(), NULL);
    ngx_hex_dump(dst, md, NGX_HTTP_SF_OAUTH_FP_LEN / 2);
}
