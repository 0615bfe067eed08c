
/*
 * The gzip inflation of bodies, the module's two zlib users: a client's
 * gzip-compressed SOAP envelope, inflated a slice at a time before it is
 * parsed, and a gzip-compressed error response from Salesforce, inflated
 * whole, up to the inspection limit, before its verdict.  Both inflate
 * gzip alone and every member of a stream; they share the stream's setup,
 * the start of each member and the meaning of zlib's answers, and keep
 * each its own limits.
 */


#include "ngx_http_sf_oauth.h"

#include <zlib.h>


/*
 * A gzip-compressed envelope (Content-Encoding: gzip: WSC-based clients
 * such as Data Loader send one when compression is on) is inflated before
 * it is parsed, and goes to Salesforce inflated: a gzip stream cannot be
 * edited in place.  The inflated body is kept in memory up to
 * client_body_buffer_size and in a temp file of client_body_temp_path
 * beyond, as nginx keeps a request body.
 *
 * Every member of the stream is inflated, as gzip(1) does (RFC 1952: a
 * gzip file is a series of members); bytes after the last member that are
 * not a whole member are refused, and so is a stream cut short.  The
 * inflated size is bounded whatever client_max_body_size says (a zip
 * bomb): sf_oauth_soap_inflate_limit, and client_max_body_size when it is
 * not 0.  The stream is inflated a slice at a time, at most
 * NGX_HTTP_SF_OAUTH_INFLATE_SLICE bytes in or out: the caller gives the
 * event loop back between two slices, so that an envelope never stalls
 * the worker's other requests.
 */

struct ngx_http_sf_oauth_inflate_s {
    ngx_http_request_t          *request;
    z_stream                     zs;
    ngx_uint_t                   live;

    /* the input: the link being read, the next offset of its file */
    ngx_chain_t                 *cl;
    off_t                        pos;
    u_char                      *chunk;

    /* the output */
    ngx_buf_t                   *out;
    ngx_chain_t                 *head;
    ngx_chain_t                **last;
    off_t                        total;
    size_t                       memory;
    ngx_temp_file_t             *tf;

    /* the most it inflates to, and which limit that is */
    off_t                        max;
    ngx_uint_t                   limit;
    ngx_uint_t                   ratio;

    /* the members inflated whole; the current one's header, once read */
    ngx_uint_t                   members;
    gz_header                    gzhead;
};


#define NGX_HTTP_SF_OAUTH_LIMIT_CONF    0
#define NGX_HTTP_SF_OAUTH_LIMIT_CLIENT  1
#define NGX_HTTP_SF_OAUTH_LIMIT_RATIO   2

#define NGX_HTTP_SF_OAUTH_INFLATE_READ  16384


static void ngx_http_sf_oauth_inflate_free_stream(void *data);
static ngx_int_t ngx_http_sf_oauth_inflate_read_input(
    ngx_http_sf_oauth_inflate_t *in);
static ngx_int_t ngx_http_sf_oauth_inflate_name_limit(
    ngx_http_sf_oauth_inflate_t *in, ngx_str_t *why);
static ngx_int_t ngx_http_sf_oauth_inflate_finish_output(
    ngx_http_sf_oauth_inflate_t *in, ngx_chain_t **out);
static ngx_int_t ngx_http_sf_oauth_inflate_save_output(
    ngx_http_sf_oauth_inflate_t *in);
static ngx_int_t ngx_http_sf_oauth_inflate_open_gzip(z_stream *zs,
    gz_header *head);
static ngx_int_t ngx_http_sf_oauth_inflate_start_member(z_stream *zs,
    gz_header *head);
static ngx_int_t ngx_http_sf_oauth_inflate_map_error(int rc);


/*
 * The state of a body's inflation, in the request's pool: its pool
 * cleanup frees zlib's state when the request goes, finished or not (a
 * client that went away mid-inflation); the temp file goes with the pool
 * as a request body's does.
 */

ngx_http_sf_oauth_inflate_t *
ngx_http_sf_oauth_inflate_start_envelope(ngx_http_request_t *r,
    ngx_chain_t *body)
{
    off_t                          size, ratio;
    ngx_buf_t                     *b;
    ngx_chain_t                   *cl;
    ngx_pool_cleanup_t            *cln;
    ngx_http_core_loc_conf_t      *clcf;
    ngx_http_sf_oauth_inflate_t   *in;
    ngx_http_sf_oauth_loc_conf_t  *slcf;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
    slcf = ngx_http_get_module_loc_conf(r, ngx_http_sf_oauth_module);

    in = ngx_pcalloc(r->pool, sizeof(ngx_http_sf_oauth_inflate_t));
    if (in == NULL) {
        return NULL;
    }

    in->chunk = ngx_pnalloc(r->pool, NGX_HTTP_SF_OAUTH_INFLATE_READ);
    if (in->chunk == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    in->request = r;
    in->head = NULL;
    in->last = &in->head;
    in->memory = clcf->client_body_buffer_size;
    in->cl = body;
    in->pos = (body && body->buf->in_file) ? body->buf->file_pos : 0;

    /* the compressed size */

    size = 0;

    for (cl = body; cl; cl = cl->next) {
        b = cl->buf;
        size += ngx_buf_in_memory(b) ? b->last - b->pos
                                     : b->in_file ? b->file_last - b->file_pos
                                                  : 0;
    }

    in->max = slcf->inflate_max;
    in->limit = NGX_HTTP_SF_OAUTH_LIMIT_CONF;
    in->ratio = slcf->inflate_ratio;

    if (clcf->client_max_body_size && clcf->client_max_body_size < in->max) {
        in->max = clcf->client_max_body_size;
        in->limit = NGX_HTTP_SF_OAUTH_LIMIT_CLIENT;
    }

    if (size <= in->max / (off_t) in->ratio) {
        ratio = ngx_max(size * (off_t) in->ratio,
                        NGX_HTTP_SF_OAUTH_INFLATE_FREE);

        if (ratio < in->max) {
            in->max = ratio;
            in->limit = NGX_HTTP_SF_OAUTH_LIMIT_RATIO;
        }
    }

    /* gzhead.done tells a member's header read: no field is kept */

    if (ngx_http_sf_oauth_inflate_open_gzip(&in->zs, &in->gzhead) != NGX_OK) {
        return NULL;
    }

    in->live = 1;

    cln->handler = ngx_http_sf_oauth_inflate_free_stream;
    cln->data = in;

    return in;
}


static void
ngx_http_sf_oauth_inflate_free_stream(void *data)
{
    ngx_http_sf_oauth_inflate_t  *in = data;

    if (in->live) {
        in->live = 0;
        inflateEnd(&in->zs);
    }
}


/*
 * One slice of the inflation.  NGX_AGAIN: call again on a later turn of
 * the event loop; NGX_OK: the inflated body is *out; NGX_DECLINED: the
 * envelope is refused, "why" says why and *status is the answer's status
 * (413 for a body that inflates beyond a limit, 400 else).
 */

ngx_int_t
ngx_http_sf_oauth_inflate_envelope(ngx_http_sf_oauth_inflate_t *in,
    ngx_chain_t **out, ngx_uint_t *status, ngx_str_t *why)
{
    int         rc;
    off_t       produced;
    size_t      slice;
    ngx_int_t   got;
    ngx_buf_t  *b;

    ngx_str_null(why);
    *status = NGX_HTTP_BAD_REQUEST;

    if (!in->live) {
        return NGX_ERROR;
    }

    slice = 0;

    for ( ;; ) {

        if (in->zs.avail_in == 0) {
            got = ngx_http_sf_oauth_inflate_read_input(in);

            if (got == NGX_ERROR) {
                return NGX_ERROR;
            }

            if (got == NGX_DONE) {
                break;
            }
        }

        if (slice >= NGX_HTTP_SF_OAUTH_INFLATE_SLICE) {
            return NGX_AGAIN;
        }

        b = in->out;

        if (b == NULL || b->last == b->end) {
            if (b && ngx_http_sf_oauth_inflate_save_output(in) != NGX_OK) {
                return NGX_ERROR;
            }

            if (in->out == NULL) {
                in->out = ngx_create_temp_buf(in->request->pool, 65536);
                if (in->out == NULL) {
                    return NGX_ERROR;
                }
            }

            b = in->out;
        }

        in->zs.next_out = b->last;
        in->zs.avail_out = b->end - b->last;

        slice += in->zs.avail_in;

        rc = inflate(&in->zs, Z_NO_FLUSH);

        produced = in->zs.next_out - b->last;
        slice = slice - in->zs.avail_in + (size_t) produced;

        in->total += produced;
        b->last = in->zs.next_out;

        if (in->total > in->max) {
            *status = NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
            return ngx_http_sf_oauth_inflate_name_limit(in, why);
        }

        if (rc == Z_STREAM_END) {
            /* the next member, if any, starts afresh */
            in->members++;

            if (ngx_http_sf_oauth_inflate_start_member(&in->zs, &in->gzhead)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            continue;
        }

        if (ngx_http_sf_oauth_inflate_map_error(rc) == NGX_OK) {
            continue;
        }

        if (in->members && in->gzhead.done != 1) {
            ngx_str_set(why, "the gzip-compressed envelope has trailing "
                             "data that is not a gzip member");
        } else {
            ngx_str_set(why, "the gzip-compressed envelope is corrupt");
        }

        return NGX_DECLINED;
    }

    /* all the input is read */

    if (in->members == 0) {
        ngx_str_set(why, "the gzip-compressed envelope is cut short");
        return NGX_DECLINED;
    }

    if (in->zs.total_in) {
        if (in->gzhead.done == 1) {
            ngx_str_set(why, "the gzip-compressed envelope is cut short");
        } else {
            ngx_str_set(why, "the gzip-compressed envelope has trailing "
                             "data that is not a gzip member");
        }

        return NGX_DECLINED;
    }

    return ngx_http_sf_oauth_inflate_finish_output(in, out);
}


/*
 * The next input for zlib: NGX_OK with zs.avail_in set (0 for an empty
 * buffer), NGX_DONE at the body's end.  A temp file is read a chunk at a
 * time, as nginx reads it to send it upstream.
 */

static ngx_int_t
ngx_http_sf_oauth_inflate_read_input(ngx_http_sf_oauth_inflate_t *in)
{
    ssize_t     n;
    ngx_buf_t  *b;

    while (in->cl) {
        b = in->cl->buf;

        if (ngx_buf_in_memory(b)) {
            in->zs.next_in = b->pos;
            in->zs.avail_in = b->last - b->pos;

            in->cl = in->cl->next;

        } else if (b->in_file && in->pos < b->file_last) {
            n = ngx_read_file(b->file, in->chunk,
                              (size_t) ngx_min(NGX_HTTP_SF_OAUTH_INFLATE_READ,
                                               b->file_last - in->pos),
                              in->pos);
            if (n <= 0) {
                return NGX_ERROR;
            }

            in->pos += n;
            in->zs.next_in = in->chunk;
            in->zs.avail_in = n;

            if (in->pos < b->file_last) {
                return NGX_OK;
            }

            in->cl = in->cl->next;

        } else {
            in->cl = in->cl->next;
        }

        if (in->cl && in->cl->buf->in_file) {
            in->pos = in->cl->buf->file_pos;
        }

        if (in->zs.avail_in) {
            return NGX_OK;
        }
    }

    return NGX_DONE;
}


/* the body inflates beyond a limit: "why" names the limit */

static ngx_int_t
ngx_http_sf_oauth_inflate_name_limit(ngx_http_sf_oauth_inflate_t *in,
    ngx_str_t *why)
{
    u_char  *p;
    size_t   len;

    len = sizeof("the gzip-compressed envelope inflates to more than "
                 " bytes: the most that sf_oauth_soap_inflate_limit allows "
                 "for a body of this size ( times its compressed size)") - 1
          + 2 * NGX_OFF_T_LEN;

    p = ngx_pnalloc(in->request->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    why->data = p;

    switch (in->limit) {

    case NGX_HTTP_SF_OAUTH_LIMIT_CLIENT:
        p = ngx_sprintf(p, "the gzip-compressed envelope inflates to more "
                        "than %O bytes: client_max_body_size", in->max);
        break;

    case NGX_HTTP_SF_OAUTH_LIMIT_RATIO:
        p = ngx_sprintf(p, "the gzip-compressed envelope inflates to more "
                        "than %O bytes: the most that "
                        "sf_oauth_soap_inflate_limit allows for a body of "
                        "this size (%ui times its compressed size)",
                        in->max, in->ratio);
        break;

    default:
        p = ngx_sprintf(p, "the gzip-compressed envelope inflates to more "
                        "than %O bytes: sf_oauth_soap_inflate_limit",
                        in->max);
    }

    why->len = p - why->data;

    return NGX_DECLINED;
}


/* the last output buffer, and the inflated body as a chain */

static ngx_int_t
ngx_http_sf_oauth_inflate_finish_output(ngx_http_sf_oauth_inflate_t *in,
    ngx_chain_t **out)
{
    ngx_buf_t           *b;
    ngx_http_request_t  *r;

    r = in->request;

    ngx_http_sf_oauth_inflate_free_stream(in);

    if (in->out && ngx_buf_size(in->out)) {
        if (ngx_http_sf_oauth_inflate_save_output(in) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (in->tf) {
        b = ngx_calloc_buf(r->pool);
        if (b == NULL) {
            return NGX_ERROR;
        }

        b->in_file = 1;
        b->file = &in->tf->file;
        b->file_pos = 0;
        b->file_last = in->tf->file.offset;

        in->head = ngx_alloc_chain_link(r->pool);
        if (in->head == NULL) {
            return NGX_ERROR;
        }

        in->head->buf = b;
        in->head->next = NULL;

    } else {
        *in->last = NULL;
    }

    *out = in->head;

    return NGX_OK;
}


/*
 * A full output buffer: kept in memory while the whole fits in
 * client_body_buffer_size; else everything goes to the temp file, and
 * the buffer is used again.
 */

static ngx_int_t
ngx_http_sf_oauth_inflate_save_output(ngx_http_sf_oauth_inflate_t *in)
{
    ssize_t                    n;
    ngx_chain_t               *cl, one;
    ngx_temp_file_t           *tf;
    ngx_http_request_t        *r;
    ngx_http_core_loc_conf_t  *clcf;

    r = in->request;

    if (in->tf == NULL && in->total <= (off_t) in->memory) {
        cl = ngx_alloc_chain_link(r->pool);
        if (cl == NULL) {
            return NGX_ERROR;
        }

        cl->buf = in->out;
        *in->last = cl;
        in->last = &cl->next;
        in->out = NULL;

        return NGX_OK;
    }

    if (in->tf == NULL) {
        tf = ngx_pcalloc(r->pool, sizeof(ngx_temp_file_t));
        if (tf == NULL) {
            return NGX_ERROR;
        }

        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

        tf->file.fd = NGX_INVALID_FILE;
        tf->file.log = r->connection->log;
        tf->path = clcf->client_body_temp_path;
        tf->pool = r->pool;
        tf->warn = "an inflated SOAP envelope is buffered to a temporary "
                   "file";
        tf->log_level = NGX_LOG_INFO;
        tf->clean = 1;

        in->tf = tf;

        *in->last = NULL;

        if (in->head) {
            n = ngx_write_chain_to_temp_file(tf, in->head);
            if (n == NGX_ERROR) {
                return NGX_ERROR;
            }

            tf->offset += n;
        }
    }

    one.buf = in->out;
    one.next = NULL;

    n = ngx_write_chain_to_temp_file(in->tf, &one);
    if (n == NGX_ERROR) {
        return NGX_ERROR;
    }

    in->tf->offset += n;
    in->out->pos = in->out->start;
    in->out->last = in->out->start;

    return NGX_OK;
}


/*
 * The inflated form of a gzip-compressed body, at most
 * NGX_HTTP_SF_OAUTH_INSPECT_MAX bytes of it; "whole" stays set only if
 * that is all of it.  Every member of the stream is inflated, as gzip(1)
 * does.  NGX_DECLINED: not gzip that inflates, or trailing bytes that are
 * not a gzip member.
 */

ngx_int_t
ngx_http_sf_oauth_inflate_response(ngx_pool_t *pool, u_char **body,
    size_t *len, ngx_uint_t *whole)
{
    int        rc;
    u_char    *out;
    z_stream   zs;

    out = ngx_pnalloc(pool, NGX_HTTP_SF_OAUTH_INSPECT_MAX);
    if (out == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_sf_oauth_inflate_open_gzip(&zs, NULL) != NGX_OK) {
        return NGX_ERROR;
    }

    zs.next_in = *body;
    zs.avail_in = *len;
    zs.next_out = out;
    zs.avail_out = NGX_HTTP_SF_OAUTH_INSPECT_MAX;

    for ( ;; ) {
        rc = inflate(&zs, Z_FINISH);

        if (rc != Z_STREAM_END) {
            break;
        }

        if (zs.avail_in == 0 || zs.avail_out == 0) {
            break;
        }

        /* the next member */

        if (ngx_http_sf_oauth_inflate_start_member(&zs, NULL) != NGX_OK) {
            inflateEnd(&zs);
            return NGX_ERROR;
        }
    }

    inflateEnd(&zs);

    if (ngx_http_sf_oauth_inflate_map_error(rc) != NGX_OK) {
        /* not gzip, or trailing bytes after a member that are not gzip */
        return NGX_DECLINED;
    }

    if (rc != Z_STREAM_END || zs.avail_in) {
        *whole = 0;
    }

    *body = out;
    *len = zs.next_out - out;

    return NGX_OK;
}


/*
 * A zlib stream that inflates gzip: 16 + MAX_WBITS, a gzip header and
 * trailer, nothing else (neither zlib's own format nor raw deflate).
 * With "head", zlib reports each member's header there.  The stream is
 * not left open on an error.
 */

static ngx_int_t
ngx_http_sf_oauth_inflate_open_gzip(z_stream *zs, gz_header *head)
{
    ngx_memzero(zs, sizeof(z_stream));

    if (inflateInit2(zs, 16 + MAX_WBITS) != Z_OK) {
        return NGX_ERROR;
    }

    if (head && inflateGetHeader(zs, head) != Z_OK) {
        inflateEnd(zs);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * After a member's trailer, the next member of the stream, if any, starts
 * afresh (RFC 1952: a gzip file is a series of members), with "head" to
 * report its header again.  The stream stays open on an error: the caller
 * ends it.
 */

static ngx_int_t
ngx_http_sf_oauth_inflate_start_member(z_stream *zs, gz_header *head)
{
    if (inflateReset(zs) != Z_OK) {
        return NGX_ERROR;
    }

    if (head && inflateGetHeader(zs, head) != Z_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * What inflate() said: NGX_OK while the stream inflates (Z_OK; Z_BUF_ERROR,
 * no progress until more input or room; Z_STREAM_END, a member's end),
 * NGX_DECLINED for what is not gzip that inflates (a corrupt stream, bytes
 * that are not gzip, or any other error of zlib's).
 */

static ngx_int_t
ngx_http_sf_oauth_inflate_map_error(int rc)
{
    if (rc == Z_OK || rc == Z_BUF_ERROR || rc == Z_STREAM_END) {
        return NGX_OK;
    }

    return NGX_DECLINED;
}
