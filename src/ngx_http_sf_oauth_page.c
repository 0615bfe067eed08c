
/*
 * The module's own HTML pages (the console's, and the web server flow's):
 * a small complete document around the caller's fragments, with the
 * headers that keep such a page to itself (no cache, no referrer, no
 * frame, nothing external), and the HTML escaping of what goes into one.
 */


#include "ngx_http_sf_oauth.h"

#include <openssl/evp.h>


static ngx_int_t ngx_http_sf_oauth_page_header(ngx_http_request_t *r,
    const char *name, u_char *value, size_t len);
static ngx_int_t ngx_http_sf_oauth_page_origin_ok(ngx_str_t *origin);
static ngx_str_t *ngx_http_sf_oauth_page_style_hash(void);


/* the page's only style: the CSP names its hash, no 'unsafe-inline' */

static u_char  ngx_http_sf_oauth_page_style[] =
    "body{font-family:sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #bbb;padding:.3em .6em;text-align:left;"
    "vertical-align:top}"
    "th{background:#eee}"
    ".valid{color:#060}"
    ".refreshing,.backoff{color:#850}"
    ".needs-authorization,.not-connected{color:#a00;font-weight:bold}"
    "code{font-size:90%}";


static u_char  ngx_http_sf_oauth_page_start[] =
    "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
    "<meta name=\"referrer\" content=\"no-referrer\">\n<title>";

static u_char  ngx_http_sf_oauth_page_title_end[] = "</title>\n<style>";

static u_char  ngx_http_sf_oauth_page_head_end[] =
    "</style>\n</head>\n<body>\n";

static u_char  ngx_http_sf_oauth_page_end[] = "</body>\n</html>\n";


/*
 * Sends an HTML page: "title" (escaped here) and "body", a chain of HTML
 * fragments already escaped by the caller, in a complete document, with
 * the headers of ngx_http_sf_oauth_page_headers().  The chain's last
 * link is linked to the document's end.  The request body must have been
 * read or discarded.  HEAD gets the header alone.
 */

ngx_int_t
ngx_http_sf_oauth_page_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *title, ngx_chain_t *body, ngx_str_t *form_action)
{
    u_char       *p;
    off_t         len;
    ngx_int_t     rc;
    ngx_buf_t    *head, *end;
    ngx_chain_t  *cl, *out, *last;

    rc = ngx_http_sf_oauth_page_headers(r, form_action);
    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    head = ngx_create_temp_buf(r->pool,
                               sizeof(ngx_http_sf_oauth_page_start) - 1
                               + ngx_http_sf_oauth_page_escape_len(
                                     title->data, title->len)
                               + sizeof(ngx_http_sf_oauth_page_title_end) - 1
                               + sizeof(ngx_http_sf_oauth_page_style) - 1
                               + sizeof(ngx_http_sf_oauth_page_head_end) - 1);
    if (head == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(head->last, ngx_http_sf_oauth_page_start,
                   sizeof(ngx_http_sf_oauth_page_start) - 1);
    p = ngx_http_sf_oauth_page_escape(p, title->data, title->len);
    p = ngx_cpymem(p, ngx_http_sf_oauth_page_title_end,
                   sizeof(ngx_http_sf_oauth_page_title_end) - 1);
    p = ngx_cpymem(p, ngx_http_sf_oauth_page_style,
                   sizeof(ngx_http_sf_oauth_page_style) - 1);
    head->last = ngx_cpymem(p, ngx_http_sf_oauth_page_head_end,
                            sizeof(ngx_http_sf_oauth_page_head_end) - 1);

    end = ngx_calloc_buf(r->pool);
    if (end == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    end->pos = ngx_http_sf_oauth_page_end;
    end->last = end->pos + sizeof(ngx_http_sf_oauth_page_end) - 1;
    end->memory = 1;
    end->last_buf = (r == r->main) ? 1 : 0;
    end->last_in_chain = 1;

    out = ngx_alloc_chain_link(r->pool);
    last = ngx_alloc_chain_link(r->pool);
    if (out == NULL || last == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    out->buf = head;
    out->next = body;
    last->buf = end;
    last->next = NULL;

    len = (head->last - head->pos) + (end->last - end->pos);

    for (cl = out; cl->next; cl = cl->next) {
        cl->next->buf->last_buf = 0;
        cl->next->buf->last_in_chain = 0;
        len += ngx_buf_size(cl->next->buf);
    }

    cl->next = last;

    r->headers_out.status = status;
    r->headers_out.content_length_n = len;
    r->headers_out.content_type_lowcase = NULL;
    ngx_str_set(&r->headers_out.content_type, "text/html; charset=utf-8");
    r->headers_out.content_type_len = sizeof("text/html") - 1;

    if (r->headers_out.last_modified) {
        r->headers_out.last_modified->hash = 0;
        r->headers_out.last_modified = NULL;
    }

    r->headers_out.last_modified_time = -1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    return ngx_http_output_filter(r, out);
}


/*
 * The headers of every answer of the console and the flow, pages or not:
 * no cache, no referrer, no frame, no sniffing, and a CSP that allows
 * the page's own style and forms to itself only, and, when
 * "form_action" is not NULL, to those origins (the authorize URLs', one
 * space between two: Chrome applies form-action to the redirect that
 * follows a form's POST).
 */

ngx_int_t
ngx_http_sf_oauth_page_headers(ngx_http_request_t *r, ngx_str_t *form_action)
{
    u_char     *p, *csp;
    size_t      len;
    ngx_str_t  *hash;

    static u_char  csp_start[] = "default-src 'none'; style-src '";
    static u_char  csp_form[] = "'; form-action 'self'";
    static u_char  csp_end[] =
        "; frame-ancestors 'none'; base-uri 'none'";

    hash = ngx_http_sf_oauth_page_style_hash();
    if (hash == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "sf_oauth: the console page's style hash failed");
        return NGX_ERROR;
    }

    if (form_action && !ngx_http_sf_oauth_page_origin_ok(form_action)) {
        /* never a header that a stray character could cut or extend */
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "sf_oauth: the form-action origin of a console page "
                      "is not a plain origin");
        return NGX_ERROR;
    }

    len = sizeof(csp_start) - 1 + hash->len + sizeof(csp_form) - 1
          + (form_action ? 1 + form_action->len : 0) + sizeof(csp_end) - 1;

    csp = ngx_pnalloc(r->pool, len);
    if (csp == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(csp, csp_start, sizeof(csp_start) - 1);
    p = ngx_cpymem(p, hash->data, hash->len);
    p = ngx_cpymem(p, csp_form, sizeof(csp_form) - 1);

    if (form_action) {
        *p++ = ' ';
        p = ngx_cpymem(p, form_action->data, form_action->len);
    }

    p = ngx_cpymem(p, csp_end, sizeof(csp_end) - 1);

    if (ngx_http_sf_oauth_page_header(r, "Content-Security-Policy", csp,
                                      p - csp)
           != NGX_OK
        || ngx_http_sf_oauth_page_header(r, "Cache-Control",
                                         (u_char *) "no-store",
                                         sizeof("no-store") - 1)
           != NGX_OK
        || ngx_http_sf_oauth_page_header(r, "Referrer-Policy",
                                         (u_char *) "no-referrer",
                                         sizeof("no-referrer") - 1)
           != NGX_OK
        || ngx_http_sf_oauth_page_header(r, "X-Frame-Options",
                                         (u_char *) "DENY",
                                         sizeof("DENY") - 1)
           != NGX_OK
        || ngx_http_sf_oauth_page_header(r, "X-Content-Type-Options",
                                         (u_char *) "nosniff",
                                         sizeof("nosniff") - 1)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * HTML escaping of & < > " and ': into "dst", which holds
 * ngx_http_sf_oauth_page_escape_len() bytes; returns the end.
 */

u_char *
ngx_http_sf_oauth_page_escape(u_char *dst, u_char *src, size_t len)
{
    u_char  ch;

    while (len--) {
        ch = *src++;

        switch (ch) {

        case '&':
            dst = ngx_cpymem(dst, "&amp;", sizeof("&amp;") - 1);
            break;

        case '<':
            dst = ngx_cpymem(dst, "&lt;", sizeof("&lt;") - 1);
            break;

        case '>':
            dst = ngx_cpymem(dst, "&gt;", sizeof("&gt;") - 1);
            break;

        case '"':
            dst = ngx_cpymem(dst, "&quot;", sizeof("&quot;") - 1);
            break;

        case '\'':
            dst = ngx_cpymem(dst, "&#39;", sizeof("&#39;") - 1);
            break;

        default:
            *dst++ = ch;
            break;
        }
    }

    return dst;
}


/*
 * The whole length of "src" escaped (not the growth, as
 * ngx_escape_html(NULL, ...) answers).
 */

size_t
ngx_http_sf_oauth_page_escape_len(u_char *src, size_t len)
{
    size_t  n;

    n = len;

    while (len--) {
        switch (*src++) {

        case '&':
            n += sizeof("&amp;") - 2;
            break;

        case '<':
        case '>':
            n += sizeof("&lt;") - 2;
            break;

        case '"':
            n += sizeof("&quot;") - 2;
            break;

        case '\'':
            n += sizeof("&#39;") - 2;
            break;

        default:
            break;
        }
    }

    return n;
}


static ngx_int_t
ngx_http_sf_oauth_page_header(ngx_http_request_t *r, const char *name,
    u_char *value, size_t len)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value.data = value;
    h->value.len = len;
    h->lowcase_key = NULL;

    return NGX_OK;
}


/* scheme://host[:port], of the characters an origin has, no more */

static ngx_int_t
ngx_http_sf_oauth_page_origin_ok(ngx_str_t *origin)
{
    u_char      ch, *p, *end, *start;
    ngx_uint_t  i;

    /* a list of origins, one space between two: the console's forms' */

    p = origin->data;
    end = origin->data + origin->len;

    for ( ;; ) {
        start = p;

        while (p < end && *p != ' ') {
            p++;
        }

        if (p - start < (ssize_t) sizeof("http://x") - 1
            || (ngx_strncmp(start, "https://", sizeof("https://") - 1) != 0
                && ngx_strncmp(start, "http://", sizeof("http://") - 1)
                   != 0))
        {
            return 0;
        }

        for (i = 0; i < (ngx_uint_t) (p - start); i++) {
            ch = start[i];

            if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
                || (ch >= '0' && ch <= '9')
                || ch == '.' || ch == '-' || ch == ':' || ch == '/'
                || ch == '[' || ch == ']')
            {
                continue;
            }

            return 0;
        }

        if (p == end) {
            return 1;
        }

        p++;
    }
}


/* 'sha256-...' of the style, computed once per process */

static ngx_str_t *
ngx_http_sf_oauth_page_style_hash(void)
{
    u_char            md[EVP_MAX_MD_SIZE];
    unsigned int      md_len;
    ngx_str_t         src, dst;

    static u_char     buf[sizeof("sha256-")
                          + ngx_base64_encoded_length(32)];
    static ngx_str_t  hash;

    if (hash.len) {
        return &hash;
    }

    if (EVP_Digest(ngx_http_sf_oauth_page_style,
                   sizeof(ngx_http_sf_oauth_page_style) - 1, md, &md_len,
                   EVP_sha256(), NULL)
        != 1
        || md_len != 32)
    {
        return NULL;
    }

    src.data = md;
    src.len = md_len;

    hash.data = buf;
    hash.len = sizeof("sha256-") - 1;
    ngx_memcpy(buf, "sha256-", sizeof("sha256-") - 1);

    dst.data = buf + hash.len;
    ngx_encode_base64(&dst, &src);
    hash.len += dst.len;

    return &hash;
}
