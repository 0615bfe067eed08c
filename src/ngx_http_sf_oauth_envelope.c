
/*
 * The SOAP envelope: the session in a request's SessionHeader.
 *
 * SOAP does not read the Authorization header: the session travels in the
 * envelope, <Header><SessionHeader><sessionId>.  A client's envelope is
 * parsed once, when its body has been read, by libxml2's SAX2 push parser:
 * namespace-aware (any prefix, or a default namespace), with comments and
 * CDATA, and with no DTD at all, so no entity can be declared, expanded or
 * fetched (an XXE through the proxy).  A SOAP message must not hold a DTD
 * anyway (SOAP 1.1, section 3).
 *
 * Only the head is read: the bytes up to the start tag of the Body, at
 * most NGX_HTTP_SF_OAUTH_HEAD_MAX.  The parse stops there, and the rest
 * of the body is sent as nginx read it, from memory or from its temp file:
 * a 50 MB Metadata deploy costs the head, not the body.
 *
 * The parse gives a plan: the head cut into pieces, with a token to go
 * between each two, and the rest of the body.  Where the token goes:
 *
 *   - the content of each sessionId of a SessionHeader of the Header,
 *     whatever the client put there (text, CDATA, comments, nothing),
 *     whatever its namespace;
 *   - a SessionHeader in the endpoint's namespace without a sessionId
 *     gets one;
 *   - a Header without a SessionHeader in the endpoint's namespace gets
 *     one;
 *   - an envelope without a Header gets one, before the Body.
 *
 * The positions come from the parser: xmlByteConsumed() in a start tag's
 * callback is the offset of its ">" or "/>", and in an end tag's callback
 * the offset just past its ">".  The "<" of a tag is the last one before
 * those: a "<" cannot occur inside a tag.
 *
 * The plan is applied each time the proxy builds an upstream request, with
 * the token of that moment: the first request and its replay after a dead
 * session get their own.  Between the two the request body holds the
 * client's envelope again.
 *
 * This file is one concern, though it is over a thousand lines: the SAX2
 * callbacks, the offsets they give, the plan they build and the body made
 * from the plan share one state (ngx_http_sf_oauth_parse_t) and must be
 * read together to see that a token lands only where the plan says.
 *
 * Each worker keeps one parser context and one head buffer for every
 * parse (see ngx_http_sf_oauth_envelope_context()).  The gunzip of an
 * envelope is in ngx_http_sf_oauth_inflate.c, the answers the module
 * writes itself in ngx_http_sf_oauth_answer.c.
 */


#include "ngx_http_sf_oauth.h"

#include <libxml/parser.h>


/* what the parse has seen, by depth: 1 the Envelope, 2 Header, 3, 4 */
typedef struct {
    ngx_pool_t                  *pool;
    xmlParserCtxtPtr             ctxt;

    u_char                      *head;
    size_t                       len;

    ngx_str_t                   *ns;

    ngx_uint_t                   depth;
    ngx_uint_t                   in_header;
    ngx_uint_t                   in_session;

    /* where the current Header, SessionHeader and sessionId start */
    off_t                        header_start;
    off_t                        session_start;
    off_t                        id_start;

    ngx_str_t                   *header_prefix;

    ngx_uint_t                   header_seen;
    ngx_uint_t                   session_seen;
    ngx_uint_t                   session_ours;
    ngx_uint_t                   id_seen;

    ngx_array_t                  edits;   /* ngx_http_sf_oauth_edit_t */

    /* the offset of the Body's start tag, and the call in the Body */
    off_t                        body;
    ngx_uint_t                   call;
    ngx_uint_t                   done;

    /* the bytes that decided the plan: the call's start tag's end, or 0 */
    size_t                       decided;

    const char                  *error;
} ngx_http_sf_oauth_parse_t;


/* replaces [start, end) of the head with "before", the token, "after" */
typedef struct {
    off_t                        start;
    off_t                        end;
    ngx_str_t                   *before;
    ngx_str_t                   *after;
} ngx_http_sf_oauth_edit_t;


/*
 * A head that libxml2 parsed, and its plan: the bytes from the envelope's
 * start to the ">" (or "/>") that ends the call's start tag, which
 * decided everything the plan holds, the endpoint's namespace, the edits
 * and the markup they put around the token.  One block of memory, with
 * the bytes after the structure.
 */
typedef struct {
    ngx_queue_t                  queue;
    size_t                       size;

    ngx_str_t                    ns;
    u_char                      *head;
    size_t                       len;

    off_t                        body;
    ngx_uint_t                   call;

    ngx_uint_t                   nedits;
    ngx_http_sf_oauth_edit_t     edits[NGX_HTTP_SF_OAUTH_EDITS_MAX];
    ngx_str_t                    text[2 * NGX_HTTP_SF_OAUTH_EDITS_MAX];
} ngx_http_sf_oauth_memo_t;


static void ngx_http_sf_oauth_envelope_start(void *data,
    const xmlChar *local, const xmlChar *prefix, const xmlChar *uri,
    int nb_namespaces, const xmlChar **namespaces, int nb_attributes,
    int nb_defaulted, const xmlChar **attributes);
static void ngx_http_sf_oauth_envelope_end(void *data, const xmlChar *local,
    const xmlChar *prefix, const xmlChar *uri);
static void ngx_http_sf_oauth_envelope_dtd(void *data, const xmlChar *name,
    const xmlChar *external_id, const xmlChar *system_id);
static void ngx_http_sf_oauth_envelope_entity(void *data, const xmlChar *name,
    int type, const xmlChar *public_id, const xmlChar *system_id,
    xmlChar *content);
static void ngx_http_sf_oauth_envelope_serror(void *data, xmlErrorPtr error);
static off_t ngx_http_sf_oauth_envelope_offset(ngx_http_sf_oauth_parse_t *ps);
static off_t ngx_http_sf_oauth_envelope_tag(ngx_http_sf_oauth_parse_t *ps,
    off_t pos);
static ngx_int_t ngx_http_sf_oauth_envelope_edit(ngx_http_sf_oauth_parse_t *ps,
    off_t start, off_t end, ngx_str_t *before, ngx_str_t *after);
static ngx_str_t *ngx_http_sf_oauth_envelope_text(
    ngx_http_sf_oauth_parse_t *ps, const char *fmt, ...);
static ngx_int_t ngx_http_sf_oauth_envelope_plan(ngx_http_sf_oauth_parse_t *ps,
    ngx_chain_t *body, ngx_http_sf_oauth_envelope_t *env);
static ssize_t ngx_http_sf_oauth_envelope_read(ngx_chain_t *body, off_t pos,
    u_char *buf, size_t size);
static ngx_int_t ngx_http_sf_oauth_envelope_soap_ns(const xmlChar *uri);
static ngx_int_t ngx_http_sf_oauth_envelope_encoding(u_char *p, size_t len,
    ngx_str_t *why);
static ngx_str_t *ngx_http_sf_oauth_envelope_prefix(
    ngx_http_sf_oauth_parse_t *ps, const xmlChar *prefix);
static xmlParserCtxtPtr ngx_http_sf_oauth_envelope_context(void);
static ngx_http_sf_oauth_memo_t *ngx_http_sf_oauth_envelope_recall(
    ngx_chain_t *body, ngx_str_t *ns, size_t *have);
static ngx_int_t ngx_http_sf_oauth_envelope_same(ngx_chain_t *body,
    u_char *head, size_t len);
static ngx_int_t ngx_http_sf_oauth_envelope_in_memory(ngx_chain_t *body,
    off_t len);
static ngx_int_t ngx_http_sf_oauth_envelope_part(ngx_array_t *parts,
    ngx_chain_t *body, u_char *copy, off_t start, off_t end);
static void ngx_http_sf_oauth_envelope_memorize(ngx_http_sf_oauth_parse_t *ps);
static void ngx_http_sf_oauth_envelope_forget(size_t size);


#define NGX_HTTP_SF_OAUTH_SOAP_NS  "http://schemas.xmlsoap.org/soap/envelope/"


#define ngx_http_sf_oauth_local(local, name)                                  \
    (ngx_strcmp(local, name) == 0)


static ngx_str_t  ngx_http_sf_oauth_envelope_ns[] = {
    ngx_string("/services/Soap/u/"), ngx_string("urn:partner.soap.sforce.com"),
    ngx_string("/services/Soap/c/"),
    ngx_string("urn:enterprise.soap.sforce.com"),
    ngx_string("/services/Soap/m/"),
    ngx_string("http://soap.sforce.com/2006/04/metadata"),
    ngx_string("/services/Soap/T/"), ngx_string("urn:tooling.soap.sforce.com"),
    ngx_null_string, ngx_null_string
};


/*
 * One parser context and one head buffer in each worker, reused by every
 * parse: a parse runs to its end within one call, and a context made for
 * each envelope (its dictionary, stacks and buffers) cost as much as the
 * parse itself.  The context is made again after a parse that did not
 * end where the module stopped it, and when its dictionary holds more
 * names, or more bytes of them, than envelopes of Salesforce's ever need:
 * a client cannot grow a worker through it.
 */

#define NGX_HTTP_SF_OAUTH_DICT_MAX    1024
#define NGX_HTTP_SF_OAUTH_DICT_BYTES  (256 * 1024)

static xmlSAXHandler     ngx_http_sf_oauth_envelope_sax;
static xmlParserCtxtPtr  ngx_http_sf_oauth_envelope_ctxt;
static u_char            ngx_http_sf_oauth_envelope_head[
                             NGX_HTTP_SF_OAUTH_HEAD_MAX];


/*
 * The heads of the last envelopes that libxml2 parsed, with their plans,
 * most recent first.  A client sends the same head again and again: the
 * Header of its calls (a SessionHeader, CallOptions, QueryOptions) and
 * the call's start tag do not change from one query() to the next, only
 * what follows them does.  An envelope whose first bytes are exactly the
 * bytes that decided a plan gets that plan, as libxml2 would give it
 * again: a SAX parse reports the start tags in order, each with what it
 * read up to the tag's end, and the parse stops at the call's; bytes
 * after that end may change when libxml2 gets to report the call, never
 * what it reports.  Any other envelope is parsed.
 * The fuzzer (fuzz/fuzz_envelope.c) holds each plan given this way to a
 * new parse of the same envelope.  What is kept is bounded, and lives in
 * the worker only; none of it is ever logged.
 */

#define NGX_HTTP_SF_OAUTH_MEMO_MAX    16
#define NGX_HTTP_SF_OAUTH_MEMO_BYTES  (512 * 1024)

static ngx_queue_t       ngx_http_sf_oauth_envelope_memo;
static ngx_uint_t        ngx_http_sf_oauth_envelope_memos;
static size_t            ngx_http_sf_oauth_envelope_memo_bytes;


/* libxml2's globals, once in each worker, before any parse */

void
ngx_http_sf_oauth_envelope_init(void)
{
    xmlSAXHandler  *sax;

    xmlInitParser();

    ngx_queue_init(&ngx_http_sf_oauth_envelope_memo);

    sax = &ngx_http_sf_oauth_envelope_sax;

    ngx_memzero(sax, sizeof(xmlSAXHandler));

    sax->initialized = XML_SAX2_MAGIC;
    sax->startElementNs = ngx_http_sf_oauth_envelope_start;
    sax->endElementNs = ngx_http_sf_oauth_envelope_end;
    sax->internalSubset = ngx_http_sf_oauth_envelope_dtd;
    sax->externalSubset = ngx_http_sf_oauth_envelope_dtd;
    sax->entityDecl = ngx_http_sf_oauth_envelope_entity;
    sax->serror = ngx_http_sf_oauth_envelope_serror;
}


void
ngx_http_sf_oauth_envelope_exit(void)
{
    if (ngx_http_sf_oauth_envelope_ctxt) {
        xmlFreeParserCtxt(ngx_http_sf_oauth_envelope_ctxt);
        ngx_http_sf_oauth_envelope_ctxt = NULL;
    }

    ngx_http_sf_oauth_envelope_forget(NGX_HTTP_SF_OAUTH_MEMO_BYTES);
}


/*
 * The kind of API a request goes to, from its URI: SOAP, Bulk 1.0, the
 * Streaming API (CometD) or REST.  The URI is the client's, as nginx
 * normalized it.
 */

ngx_uint_t
ngx_http_sf_oauth_envelope_kind(ngx_http_request_t *r)
{
    u_char  *p, *last;

    last = r->uri.data + r->uri.len;

    p = ngx_strlcasestrn(r->uri.data, last, (u_char *) "/services/",
                         sizeof("/services/") - 1 - 1);
    if (p == NULL) {
        /* the Streaming API: /cometd/V */

        p = ngx_strlcasestrn(r->uri.data, last, (u_char *) "/cometd/",
                             sizeof("/cometd/") - 1 - 1);

        return p ? NGX_HTTP_SF_OAUTH_COMETD : NGX_HTTP_SF_OAUTH_REST;
    }

    p += sizeof("/services/") - 1;

    if (last - p >= 5 && ngx_strncmp(p, "Soap/", 5) == 0) {
        return NGX_HTTP_SF_OAUTH_SOAP;
    }

    if (last - p >= 6 && ngx_strncmp(p, "async/", 6) == 0) {
        return NGX_HTTP_SF_OAUTH_BULK;
    }

    return NGX_HTTP_SF_OAUTH_REST;
}


/*
 * The namespace of the endpoint's SessionHeader, from the request URI:
 * partner, enterprise, Metadata, Tooling, or an Apex class's.  An empty
 * string when the endpoint is none of them.
 */

void
ngx_http_sf_oauth_envelope_namespace(ngx_http_request_t *r, ngx_str_t *ns)
{
    u_char     *p, *last, *name;
    ngx_str_t  *e;

    ngx_str_null(ns);

    last = r->uri.data + r->uri.len;

    for (e = ngx_http_sf_oauth_envelope_ns; e->len; e += 2) {
        p = ngx_strlcasestrn(r->uri.data, last, e->data, e->len - 1);

        if (p && ngx_strncmp(p, e->data, e->len) == 0) {
            *ns = e[1];
            return;
        }
    }

    p = ngx_strlcasestrn(r->uri.data, last, (u_char *) "/services/Soap/class/",
                         sizeof("/services/Soap/class/") - 1 - 1);
    if (p == NULL) {
        return;
    }

    name = p + sizeof("/services/Soap/class/") - 1;

    for (p = name; p < last && *p != '/' && *p != '?'; p++) {
        if (!(*p >= 'a' && *p <= 'z') && !(*p >= 'A' && *p <= 'Z')
            && !(*p >= '0' && *p <= '9') && *p != '_')
        {
            return;
        }
    }

    if (p == name || p - name > 255) {
        return;
    }

    ns->len = sizeof("http://soap.sforce.com/schemas/class/") - 1
              + (p - name);
    ns->data = ngx_pnalloc(r->pool, ns->len);
    if (ns->data == NULL) {
        ns->len = 0;
        return;
    }

    ngx_memcpy(ngx_cpymem(ns->data, "http://soap.sforce.com/schemas/class/",
                          sizeof("http://soap.sforce.com/schemas/class/") - 1),
               name, p - name);
}


/*
 * Parses the head of the envelope in "body" (the request body as read, in
 * memory or in a temp file) into a plan for "env".  NGX_DECLINED with
 * *why when the envelope is refused: the client gets a SOAP fault.
 */

ngx_int_t
ngx_http_sf_oauth_envelope_parse(ngx_pool_t *pool, ngx_chain_t *body,
    ngx_str_t *ns, ngx_http_sf_oauth_envelope_t *env, ngx_str_t *why)
{
    int                         err;
    size_t                      n, have;
    ssize_t                     got;
    ngx_int_t                   rc;
    xmlParserCtxtPtr            ctxt;
    ngx_http_sf_oauth_memo_t   *m;
    ngx_http_sf_oauth_parse_t   ps;

    ngx_memzero(&ps, sizeof(ngx_http_sf_oauth_parse_t));
    ngx_memzero(env, sizeof(ngx_http_sf_oauth_envelope_t));
    ngx_str_null(why);

    ps.pool = pool;
    ps.ns = ns;
    ps.body = -1;

    /* the head is copied out by the plan before this returns */
    ps.head = ngx_http_sf_oauth_envelope_head;

    /*
     * The first bytes tell an encoding that is not ASCII-compatible; the
     * XML declaration, in the first NGX_HTTP_SF_OAUTH_XMLDECL_MAX bytes,
     * another one
     */

    got = ngx_http_sf_oauth_envelope_read(body, 0, ps.head,
                                          NGX_HTTP_SF_OAUTH_XMLDECL_MAX);
    if (got == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (got == 0) {
        ngx_str_set(why, "the request has no SOAP envelope");
        return NGX_DECLINED;
    }

    if (got >= 2
        && (ps.head[0] == 0 || ps.head[1] == 0
            || (ps.head[0] == 0xfe && ps.head[1] == 0xff)
            || (ps.head[0] == 0xff && ps.head[1] == 0xfe)))
    {
        ngx_str_set(why, "the envelope is not in UTF-8");
        return NGX_DECLINED;
    }

    if (ngx_http_sf_oauth_envelope_encoding(ps.head, got, why) != NGX_OK) {
        return NGX_DECLINED;
    }

    have = got;

    m = ngx_http_sf_oauth_envelope_recall(body, ns, &have);

    if (m == (void *) NGX_ERROR) {
        return NGX_ERROR;
    }

    if (m) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, pool->log, 0,
                       "sf_oauth: SOAP envelope: the plan of a head of %uz "
                       "bytes parsed before", m->len);

        ps.edits.elts = m->edits;
        ps.edits.nelts = m->nedits;
        ps.body = m->body;
        env->call = m->call;

        return ngx_http_sf_oauth_envelope_plan(&ps, body, env);
    }

    if (ngx_array_init(&ps.edits, pool, 2, sizeof(ngx_http_sf_oauth_edit_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ctxt = ngx_http_sf_oauth_envelope_context();
    if (ctxt == NULL) {
        return NGX_ERROR;
    }

    ctxt->userData = &ps;

    ps.ctxt = ctxt;

    rc = NGX_OK;

    for ( ;; ) {

        if (ps.len == NGX_HTTP_SF_OAUTH_HEAD_MAX) {
            if (ps.body < 0) {
                ps.error = "the envelope's head, up to its Body, is longer "
                           "than 64 KiB";

            } else {
                /*
                 * The Body has begun, but the call's start tag is not in
                 * the head: the call is not known, and may be a login()
                 */
                ps.call = NGX_HTTP_SF_OAUTH_CALL_UNKNOWN;
            }

            ps.done = 1;
            break;
        }

        n = ngx_min(4096, NGX_HTTP_SF_OAUTH_HEAD_MAX - ps.len);

        if (ps.len < have) {
            /* read already, to be compared with the heads parsed before */
            got = ngx_min(n, have - ps.len);

        } else {
            got = ngx_http_sf_oauth_envelope_read(body, ps.len,
                                                  ps.head + ps.len, n);
            if (got == NGX_ERROR) {
                rc = NGX_ERROR;
                break;
            }
        }

        ps.len += got;

        err = xmlParseChunk(ctxt, (char *) ps.head + ps.len - got, (int) got,
                            got == 0);

        if (ctxt->input && ctxt->input->buf && ctxt->input->buf->encoder) {
            /* another encoding: the parser's offsets are not bytes */
            ps.error = "the envelope is not in UTF-8";
            break;
        }

        if (ps.done || ps.error) {
            break;
        }

        if (err != XML_ERR_OK || !ctxt->wellFormed) {
            break;
        }

        if (got == 0) {
            ps.error = "the envelope has no SOAP Body";
            break;
        }
    }

    if (rc == NGX_OK && !ps.done && ps.error == NULL) {
        /*
         * libxml2's own words, up to their first line break: they may
         * quote a few bytes of the client's envelope (a name, a URI), so
         * only printable ASCII of them is kept.
         */

        ps.error = ctxt->lastError.message ? ctxt->lastError.message
                                           : "the envelope does not parse";

        why->data = ngx_pnalloc(pool, NGX_HTTP_SF_OAUTH_ERROR_MAX
                                      + sizeof(", line ") - 1
                                      + NGX_INT_T_LEN);
        if (why->data == NULL) {
            rc = NGX_ERROR;

        } else {
            for (n = 0;
                 n < NGX_HTTP_SF_OAUTH_ERROR_MAX && ps.error[n]
                 && ps.error[n] != '\n';
                 n++)
            {
                why->data[n] = (ps.error[n] >= 0x20 && ps.error[n] < 0x7f)
                               ? ps.error[n] : '?';
            }

            while (n && why->data[n - 1] == ' ') {
                n--;
            }

            why->len = ngx_sprintf(why->data + n, ", line %d",
                                   ctxt->lastError.line)
                       - why->data;
            rc = NGX_DECLINED;
        }

    } else if (rc == NGX_OK && ps.error) {
        why->data = (u_char *) ps.error;
        why->len = ngx_strlen(ps.error);
        rc = NGX_DECLINED;
    }

    /*
     * Kept for the next parse only after a parse that the module stopped
     * itself, with a dictionary of the size envelopes need
     */

    if (!ps.done || ps.error
        || xmlDictSize(ctxt->dict) > NGX_HTTP_SF_OAUTH_DICT_MAX
        || xmlDictGetUsage(ctxt->dict) > NGX_HTTP_SF_OAUTH_DICT_BYTES)
    {
        xmlFreeParserCtxt(ctxt);
        ngx_http_sf_oauth_envelope_ctxt = NULL;

    } else {
        ctxt->userData = NULL;
    }

    if (rc != NGX_OK) {
        return rc;
    }

    if (ps.decided) {
        ngx_http_sf_oauth_envelope_memorize(&ps);
    }

    env->call = ps.call;

    return ngx_http_sf_oauth_envelope_plan(&ps, body, env);
}


/*
 * The plan parsed before for an envelope that begins with the same bytes,
 * for the same endpoint; NULL when there is none, (void *) NGX_ERROR when
 * the body cannot be read.  The first bytes are compared where they are
 * when the body holds them in memory; or else read into the head buffer,
 * where they stay for the parse ("have").
 */

static ngx_http_sf_oauth_memo_t *
ngx_http_sf_oauth_envelope_recall(ngx_chain_t *body, ngx_str_t *ns,
    size_t *have)
{
    ssize_t                    got;
    ngx_int_t                  rc;
    ngx_queue_t               *q;
    ngx_http_sf_oauth_memo_t  *m;

    for (q = ngx_queue_head(&ngx_http_sf_oauth_envelope_memo);
         q != ngx_queue_sentinel(&ngx_http_sf_oauth_envelope_memo);
         q = ngx_queue_next(q))
    {
        m = ngx_queue_data(q, ngx_http_sf_oauth_memo_t, queue);

        if (m->ns.len != ns->len
            || (ns->len && ngx_memcmp(m->ns.data, ns->data, ns->len) != 0))
        {
            continue;
        }

        rc = ngx_http_sf_oauth_envelope_same(body, m->head, m->len);

        if (rc == 1) {
            goto found;
        }

        if (rc == 0) {
            continue;
        }

        /* not in memory: from the file, into the head buffer */

        if (m->len > *have) {
            got = ngx_http_sf_oauth_envelope_read(body, *have,
                                             ngx_http_sf_oauth_envelope_head
                                             + *have,
                                             m->len - *have);
            if (got == NGX_ERROR) {
                return (void *) NGX_ERROR;
            }

            *have += got;

            if (m->len > *have) {
                /* the body is shorter */
                continue;
            }
        }

        if (ngx_memcmp(ngx_http_sf_oauth_envelope_head, m->head, m->len)
            != 0)
        {
            continue;
        }

    found:

        ngx_queue_remove(q);
        ngx_queue_insert_head(&ngx_http_sf_oauth_envelope_memo, q);

        return m;
    }

    return NULL;
}


/*
 * Whether the body begins with the "len" bytes of "head", compared in the
 * body's buffers: 1 or 0; NGX_DECLINED when they are not all in memory.
 */

static ngx_int_t
ngx_http_sf_oauth_envelope_same(ngx_chain_t *body, u_char *head, size_t len)
{
    size_t        n;
    ngx_chain_t  *cl;

    for (cl = body; cl && len; cl = cl->next) {

        if (!ngx_buf_in_memory(cl->buf)) {
            if (ngx_buf_size(cl->buf) == 0) {
                continue;
            }

            return NGX_DECLINED;
        }

        n = ngx_min(len, (size_t) (cl->buf->last - cl->buf->pos));

        if (ngx_memcmp(cl->buf->pos, head, n) != 0) {
            return 0;
        }

        head += n;
        len -= n;
    }

    /* the body is shorter */

    return len ? 0 : 1;
}


/* whether the body's first "len" bytes are all in memory */

static ngx_int_t
ngx_http_sf_oauth_envelope_in_memory(ngx_chain_t *body, off_t len)
{
    ngx_chain_t  *cl;

    for (cl = body; cl && len > 0; cl = cl->next) {

        if (!ngx_buf_in_memory(cl->buf)) {
            if (ngx_buf_size(cl->buf) == 0) {
                continue;
            }

            return 0;
        }

        len -= cl->buf->last - cl->buf->pos;
    }

    return len <= 0;
}


/*
 * Keeps the head that decided a plan, and the plan, as the most recent;
 * the least recent go to make room.  Nothing is kept when memory is short.
 */

static void
ngx_http_sf_oauth_envelope_memorize(ngx_http_sf_oauth_parse_t *ps)
{
    u_char                    *p;
    size_t                     size;
    ngx_uint_t                 i;
    ngx_http_sf_oauth_edit_t  *e;
    ngx_http_sf_oauth_memo_t  *m;

    e = ps->edits.elts;

    size = sizeof(ngx_http_sf_oauth_memo_t) + ps->decided + ps->ns->len;

    for (i = 0; i < ps->edits.nelts; i++) {
        size += (e[i].before ? e[i].before->len : 0)
                + (e[i].after ? e[i].after->len : 0);
    }

    if (ps->edits.nelts > NGX_HTTP_SF_OAUTH_EDITS_MAX
        || size > NGX_HTTP_SF_OAUTH_MEMO_BYTES)
    {
        return;
    }

    ngx_http_sf_oauth_envelope_forget(size);

    m = ngx_alloc(size, ps->pool->log);
    if (m == NULL) {
        return;
    }

    ngx_memzero(m, sizeof(ngx_http_sf_oauth_memo_t));

    p = (u_char *) &m[1];

    m->size = size;

    m->head = p;
    m->len = ps->decided;
    p = ngx_cpymem(p, ps->head, ps->decided);

    m->ns.data = p;
    m->ns.len = ps->ns->len;

    if (ps->ns->len) {
        p = ngx_cpymem(p, ps->ns->data, ps->ns->len);
    }

    m->body = ps->body;
    m->call = ps->call;
    m->nedits = ps->edits.nelts;

    for (i = 0; i < ps->edits.nelts; i++) {
        m->edits[i].start = e[i].start;
        m->edits[i].end = e[i].end;

        if (e[i].before) {
            m->text[2 * i].data = p;
            m->text[2 * i].len = e[i].before->len;
            p = ngx_cpymem(p, e[i].before->data, e[i].before->len);
            m->edits[i].before = &m->text[2 * i];
        }

        if (e[i].after) {
            m->text[2 * i + 1].data = p;
            m->text[2 * i + 1].len = e[i].after->len;
            p = ngx_cpymem(p, e[i].after->data, e[i].after->len);
            m->edits[i].after = &m->text[2 * i + 1];
        }
    }

    ngx_queue_insert_head(&ngx_http_sf_oauth_envelope_memo, &m->queue);

    ngx_http_sf_oauth_envelope_memos++;
    ngx_http_sf_oauth_envelope_memo_bytes += size;
}


/* the least recent heads go, until "size" more bytes and one more fit */

static void
ngx_http_sf_oauth_envelope_forget(size_t size)
{
    ngx_queue_t               *q;
    ngx_http_sf_oauth_memo_t  *m;

    while (ngx_http_sf_oauth_envelope_memos
           && (ngx_http_sf_oauth_envelope_memos
                   >= NGX_HTTP_SF_OAUTH_MEMO_MAX
               || ngx_http_sf_oauth_envelope_memo_bytes + size
                  > NGX_HTTP_SF_OAUTH_MEMO_BYTES))
    {
        q = ngx_queue_last(&ngx_http_sf_oauth_envelope_memo);
        m = ngx_queue_data(q, ngx_http_sf_oauth_memo_t, queue);

        ngx_queue_remove(q);

        ngx_http_sf_oauth_envelope_memos--;
        ngx_http_sf_oauth_envelope_memo_bytes -= m->size;

        ngx_free(m);
    }
}


/*
 * The worker's parser context, ready for a new envelope: made once, or
 * reset.  libxml2 2.9's xmlCtxtReset() leaves the namespace stack of a
 * stopped parse (reset from 2.10 on): it is emptied here, or the prefixes
 * of one client's envelope would be bound in the next one's.
 */

static xmlParserCtxtPtr
ngx_http_sf_oauth_envelope_context(void)
{
    xmlParserCtxtPtr  ctxt;

    ctxt = ngx_http_sf_oauth_envelope_ctxt;

    if (ctxt == NULL) {
        ctxt = xmlCreatePushParserCtxt(&ngx_http_sf_oauth_envelope_sax,
                                       NULL, NULL, 0, NULL);
        if (ctxt == NULL) {
            return NULL;
        }

        ngx_http_sf_oauth_envelope_ctxt = ctxt;

    } else if (xmlCtxtResetPush(ctxt, NULL, 0, NULL, NULL) != 0) {
        xmlFreeParserCtxt(ctxt);
        ngx_http_sf_oauth_envelope_ctxt = NULL;
        return NULL;
    }

    ctxt->nsNr = 0;

    /*
     * xmlCtxtReset() takes the encoding for UTF-8: a new context detects
     * it from the first bytes, and skips a byte order mark
     */

    ctxt->charset = XML_CHAR_ENCODING_NONE;

    /*
     * The declared encoding is checked by the caller: libxml2 reads the
     * envelope as UTF-8 whatever alias of UTF-8 or US-ASCII it names, and
     * its offsets stay the body's bytes
     */

    (void) xmlCtxtUseOptions(ctxt, XML_PARSE_NONET | XML_PARSE_NOCDATA
                                   | XML_PARSE_IGNORE_ENC);

    /* no entity is substituted, no DTD loaded, nothing fetched */
    ctxt->replaceEntities = 0;
    ctxt->loadsubset = 0;
    ctxt->validate = 0;

    return ctxt;
}


static void
ngx_http_sf_oauth_envelope_start(void *data, const xmlChar *local,
    const xmlChar *prefix, const xmlChar *uri, int nb_namespaces,
    const xmlChar **namespaces, int nb_attributes, int nb_defaulted,
    const xmlChar **attributes)
{
    ngx_http_sf_oauth_parse_t  *ps = data;

    off_t      pos;
    ngx_str_t  *p;

    if (ps->error || ps->done) {
        return;
    }

    ps->depth++;

    if (ps->body >= 0) {
        /* the Body's first element is the call */

        if (ps->depth == 3 && uri
            && (ngx_strcmp(uri, "urn:partner.soap.sforce.com") == 0
                || ngx_strcmp(uri, "urn:enterprise.soap.sforce.com") == 0))
        {
            if (ngx_http_sf_oauth_local(local, "login")) {
                ps->call = NGX_HTTP_SF_OAUTH_CALL_LOGIN;

            } else if (ngx_http_sf_oauth_local(local, "logout")) {
                ps->call = NGX_HTTP_SF_OAUTH_CALL_LOGOUT;
            }
        }

        /*
         * The bytes that decided: up to the end of the call's start tag,
         * its ">" or "/>" included.  libxml2 reports the tag before it
         * reads that end: an envelope with another byte there is not the
         * same head (it would be refused).
         */

        pos = xmlByteConsumed(ps->ctxt);

        if (pos >= 0 && (size_t) pos < ps->len && ps->head[pos] == '>') {
            ps->decided = (size_t) pos + 1;

        } else if (pos >= 0 && (size_t) pos + 1 < ps->len
                   && ps->head[pos] == '/' && ps->head[pos + 1] == '>')
        {
            ps->decided = (size_t) pos + 2;
        }

        ps->done = 1;
        xmlStopParser(ps->ctxt);
        return;
    }

    pos = ngx_http_sf_oauth_envelope_offset(ps);
    if (pos < 0) {
        return;
    }

    switch (ps->depth) {

    case 1:
        if (!ngx_http_sf_oauth_local(local, "Envelope")
            || !ngx_http_sf_oauth_envelope_soap_ns(uri))
        {
            ps->error = "the root element is not a SOAP 1.1 Envelope";
            xmlStopParser(ps->ctxt);
        }

        return;

    case 2:
        if (!ngx_http_sf_oauth_envelope_soap_ns(uri)) {
            return;
        }

        p = ngx_http_sf_oauth_envelope_prefix(ps, prefix);
        if (p == NULL) {
            return;
        }

        if (ngx_http_sf_oauth_local(local, "Header")) {

            if (ps->header_seen) {
                ps->error = "the envelope has two Headers";
                xmlStopParser(ps->ctxt);
                return;
            }

            ps->header_seen = 1;
            ps->in_header = 1;
            ps->header_start = pos;
            ps->header_prefix = p;
            return;
        }

        if (!ngx_http_sf_oauth_local(local, "Body")) {
            return;
        }

        if (ps->head[pos] != '>' && ps->head[pos] != '/') {
            ps->error = "the Body's start tag does not end";
            xmlStopParser(ps->ctxt);
            return;
        }

        pos = ngx_http_sf_oauth_envelope_tag(ps, pos);

        if (!ps->header_seen) {
            /*
         * A Header, in the Body's prefix, right before the Body; it
         * declares the prefix, which may be the Body's own declaration.
         */

            if (ps->ns->len == 0) {
                ps->error = "the envelope has no SessionHeader, and this "
                            "endpoint's namespace is not known: send one";
                xmlStopParser(ps->ctxt);
                return;
            }

            if (ngx_http_sf_oauth_envelope_edit(ps, pos, pos,
                    ngx_http_sf_oauth_envelope_text(ps,
                        "<%VHeader xmlns%s%*s=\"%s\">"
                        "<SessionHeader xmlns=\"%V\"><sessionId>",
                        p, p->len ? ":" : "",
                        p->len ? p->len - 1 : 0, p->data,
                        NGX_HTTP_SF_OAUTH_SOAP_NS, ps->ns),
                    ngx_http_sf_oauth_envelope_text(ps,
                        "</sessionId></SessionHeader></%VHeader>", p))
                != NGX_OK)
            {
                return;
            }
        }

        ps->body = pos;

        /* one more element: the call */
        return;

    case 3:
        if (ps->in_header && ngx_http_sf_oauth_local(local, "SessionHeader"))
        {
            /*
             * Every SessionHeader's sessionId gets the token: no client's
             * session goes on.  Only one in the endpoint's namespace is
             * Salesforce's: without one, one is added.
             */

            ps->in_session = 1;
            ps->id_seen = 0;
            ps->session_start = pos;
            ps->session_ours = ps->ns->len == 0
                               || (uri
                                   && ngx_strlen(uri) == ps->ns->len
                                   && ngx_strncmp(uri, ps->ns->data,
                                                  ps->ns->len)
                                      == 0);

            if (ps->session_ours) {
                ps->session_seen = 1;
            }
        }

        return;

    case 4:
        if (ps->in_session && ngx_http_sf_oauth_local(local, "sessionId")) {
            ps->id_seen++;
            ps->id_start = pos;
        }

        return;
    }
}


static void
ngx_http_sf_oauth_envelope_end(void *data, const xmlChar *local,
    const xmlChar *prefix, const xmlChar *uri)
{
    ngx_http_sf_oauth_parse_t  *ps = data;

    off_t      pos, start;
    ngx_str_t  *p;

    if (ps->error || ps->done) {
        return;
    }

    ps->depth--;

    if (ps->body >= 0) {
        /* an empty Body */
        ps->done = 1;
        xmlStopParser(ps->ctxt);
        return;
    }

    pos = ngx_http_sf_oauth_envelope_offset(ps);
    if (pos < 0) {
        return;
    }

    switch (ps->depth) {

    case 3:
        if (!ps->in_session || !ngx_http_sf_oauth_local(local, "sessionId")) {
            return;
        }

        p = ngx_http_sf_oauth_envelope_prefix(ps, prefix);
        if (p == NULL) {
            return;
        }

        start = ps->id_start;

        if (ps->head[start] == '/') {
            /*
             * <sessionId/>: its "/>" becomes the content and the end tag;
             * the start tag keeps what it declares
             */
            (void) ngx_http_sf_oauth_envelope_edit(ps, start, pos,
                       ngx_http_sf_oauth_envelope_text(ps, ">"),
                       ngx_http_sf_oauth_envelope_text(ps, "</%VsessionId>",
                                                       p));
            return;
        }

        /* the content, whatever it is: text, CDATA, comments, elements */
        (void) ngx_http_sf_oauth_envelope_edit(ps, start + 1,
                   ngx_http_sf_oauth_envelope_tag(ps, pos - 1), NULL, NULL);
        return;

    case 2:
        if (!ps->in_session
            || !ngx_http_sf_oauth_local(local, "SessionHeader"))
        {
            return;
        }

        ps->in_session = 0;

        if (ps->id_seen || !ps->session_ours) {
            return;
        }

        p = ngx_http_sf_oauth_envelope_prefix(ps, prefix);
        if (p == NULL) {
            return;
        }

        start = ps->session_start;

        if (ps->head[start] == '/') {
            /* <SessionHeader/>: the "/>" becomes the content and end tag */
            (void) ngx_http_sf_oauth_envelope_edit(ps, start, pos,
                       ngx_http_sf_oauth_envelope_text(ps, "><%VsessionId>",
                                                       p),
                       ngx_http_sf_oauth_envelope_text(ps,
                           "</%VsessionId></%VSessionHeader>", p, p));
            return;
        }

        start = ngx_http_sf_oauth_envelope_tag(ps, pos - 1);

        (void) ngx_http_sf_oauth_envelope_edit(ps, start, start,
                   ngx_http_sf_oauth_envelope_text(ps, "<%VsessionId>", p),
                   ngx_http_sf_oauth_envelope_text(ps, "</%VsessionId>", p));
        return;

    case 1:
        if (!ps->in_header || !ngx_http_sf_oauth_local(local, "Header")) {
            return;
        }

        ps->in_header = 0;

        if (ps->session_seen) {
            return;
        }

        if (ps->ns->len == 0) {
            ps->error = "the envelope has no SessionHeader, and this "
                        "endpoint's namespace is not known: send one";
            xmlStopParser(ps->ctxt);
            return;
        }

        start = ps->header_start;

        if (ps->head[start] == '/') {
            /* <Header/>: the "/>" becomes the content and end tag */
            (void) ngx_http_sf_oauth_envelope_edit(ps, start, pos,
                       ngx_http_sf_oauth_envelope_text(ps,
                           "><SessionHeader xmlns=\"%V\"><sessionId>",
                           ps->ns),
                       ngx_http_sf_oauth_envelope_text(ps,
                           "</sessionId></SessionHeader></%VHeader>",
                           ps->header_prefix));
            return;
        }

        start = ngx_http_sf_oauth_envelope_tag(ps, pos - 1);

        (void) ngx_http_sf_oauth_envelope_edit(ps, start, start,
                   ngx_http_sf_oauth_envelope_text(ps,
                       "<SessionHeader xmlns=\"%V\"><sessionId>", ps->ns),
                   ngx_http_sf_oauth_envelope_text(ps,
                       "</sessionId></SessionHeader>"));
        return;
    }
}


/* a SOAP message must not hold a DTD: no entity is ever declared */

static void
ngx_http_sf_oauth_envelope_dtd(void *data, const xmlChar *name,
    const xmlChar *external_id, const xmlChar *system_id)
{
    ngx_http_sf_oauth_parse_t  *ps = data;

    if (ps->error == NULL) {
        ps->error = "a SOAP message must not have a DTD (DOCTYPE)";
    }

    xmlStopParser(ps->ctxt);
}


static void
ngx_http_sf_oauth_envelope_entity(void *data, const xmlChar *name, int type,
    const xmlChar *public_id, const xmlChar *system_id, xmlChar *content)
{
    ngx_http_sf_oauth_envelope_dtd(data, name, public_id, system_id);
}


/* libxml2's errors stay in the parser context: nothing goes to stderr */

static void
ngx_http_sf_oauth_envelope_serror(void *data, xmlErrorPtr error)
{
}


/*
 * The parser's position in the head, as an offset; -1, and the parse is
 * refused, if it is not in the head (it always is).
 */

static off_t
ngx_http_sf_oauth_envelope_offset(ngx_http_sf_oauth_parse_t *ps)
{
    long  pos;

    pos = xmlByteConsumed(ps->ctxt);

    if (pos < 0 || (size_t) pos > ps->len) {
        ps->error = "the parser lost its position in the envelope";
        xmlStopParser(ps->ctxt);
        return -1;
    }

    return pos;
}


/* the "<" of the tag that holds the position "pos" */

static off_t
ngx_http_sf_oauth_envelope_tag(ngx_http_sf_oauth_parse_t *ps, off_t pos)
{
    if ((size_t) pos >= ps->len) {
        pos = ps->len - 1;
    }

    while (pos > 0 && ps->head[pos] != '<') {
        pos--;
    }

    return pos;
}


static ngx_int_t
ngx_http_sf_oauth_envelope_edit(ngx_http_sf_oauth_parse_t *ps, off_t start,
    off_t end, ngx_str_t *before, ngx_str_t *after)
{
    ngx_http_sf_oauth_edit_t  *e;

    if (ps->edits.nelts == NGX_HTTP_SF_OAUTH_EDITS_MAX) {
        ps->error = "the envelope has too many sessionId elements";
        xmlStopParser(ps->ctxt);
        return NGX_ERROR;
    }

    e = ngx_array_push(&ps->edits);
    if (e == NULL) {
        ps->error = "out of memory";
        xmlStopParser(ps->ctxt);
        return NGX_ERROR;
    }

    e->start = start;
    e->end = end;
    e->before = before;
    e->after = after;

    return NGX_OK;
}


/* a piece of markup for an edit, at most 512 bytes and a namespace */

static ngx_str_t *
ngx_http_sf_oauth_envelope_text(ngx_http_sf_oauth_parse_t *ps,
    const char *fmt, ...)
{
    size_t      size;
    va_list     args;
    ngx_str_t  *s;

    size = 512 + ps->ns->len;

    s = ngx_palloc(ps->pool, sizeof(ngx_str_t));
    if (s == NULL) {
        goto failed;
    }

    s->data = ngx_pnalloc(ps->pool, size);
    if (s->data == NULL) {
        goto failed;
    }

    va_start(args, fmt);
    s->len = ngx_vslprintf(s->data, s->data + size, fmt, args) - s->data;
    va_end(args);

    return s;

failed:

    ps->error = "out of memory";
    xmlStopParser(ps->ctxt);

    return NULL;
}


/*
 * The plan: the parts of the head, in order, with a null part where a
 * token goes, the markup around each token, and the rest of the body from
 * the Body's start tag, as it was read.  The parts are not copied where
 * the body's buffers hold the head in memory (nginx read it there, for
 * the request's life): a 60 KB head costs the upstream request no copy.
 */

static ngx_int_t
ngx_http_sf_oauth_envelope_plan(ngx_http_sf_oauth_parse_t *ps,
    ngx_chain_t *body, ngx_http_sf_oauth_envelope_t *env)
{
    off_t                      pos, skip, size;
    u_char                    *copy;
    ngx_buf_t                 *b;
    ngx_str_t                 *part, *mark, *text;
    ngx_uint_t                 i, j;
    ngx_chain_t               *cl, **ll;
    ngx_http_sf_oauth_edit_t  *e;

    e = ps->edits.elts;

    copy = NULL;

    if (!ngx_http_sf_oauth_envelope_in_memory(body, ps->body)) {
        /* the head buffer is the next parse's: the parts need a copy */

        copy = ngx_pnalloc(ps->pool, (size_t) ps->body);
        if (copy == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(copy, ps->head, (size_t) ps->body);
    }

    if (ngx_array_init(&env->parts, ps->pool, 2 * ps->edits.nelts + 2,
                       sizeof(ngx_str_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_array_init(&env->marks, ps->pool, 2 * ps->edits.nelts + 1,
                       sizeof(ngx_str_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    pos = 0;

    for (i = 0; i <= ps->edits.nelts; i++) {

        size = (i < ps->edits.nelts ? e[i].start : ps->body) - pos;

        if (size < 0) {
            return NGX_ERROR;
        }

        if (ngx_http_sf_oauth_envelope_part(&env->parts, body, copy, pos,
                                            pos + size)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        env->size += size;

        if (i == ps->edits.nelts) {
            break;
        }

        pos = e[i].end;

        part = ngx_array_push(&env->parts);
        if (part == NULL) {
            return NGX_ERROR;
        }

        ngx_str_null(part);

        /* a memorized plan's markup goes with its memo: a copy */

        mark = ngx_array_push_n(&env->marks, 2);
        if (mark == NULL) {
            return NGX_ERROR;
        }

        for (j = 0; j < 2; j++) {
            text = j ? e[i].after : e[i].before;

            if (text == NULL || text->len == 0) {
                ngx_str_null(&mark[j]);
                continue;
            }

            mark[j].data = ngx_pstrdup(ps->pool, text);
            if (mark[j].data == NULL) {
                return NGX_ERROR;
            }

            mark[j].len = text->len;
            env->size += text->len;
        }
    }

    /* the rest of the body, from the Body's start tag: shadows */

    skip = ps->body;
    ll = &env->rest;

    for (cl = body; cl; cl = cl->next) {

        size = ngx_buf_size(cl->buf);

        if (skip >= size && !cl->buf->last_buf) {
            skip -= size;
            continue;
        }

        b = ngx_alloc_buf(ps->pool);
        if (b == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(b, cl->buf, sizeof(ngx_buf_t));

        if (skip > size) {
            skip = size;
        }

        if (ngx_buf_in_memory(b)) {
            /* an upstream retry rewinds a request buffer to its start */
            b->pos += skip;
            b->start = b->pos;
        }

        if (b->in_file) {
            b->file_pos += skip;
        }

        env->size += ngx_buf_size(b);
        skip = 0;

        *ll = ngx_alloc_chain_link(ps->pool);
        if (*ll == NULL) {
            return NGX_ERROR;
        }

        (*ll)->buf = b;
        ll = &(*ll)->next;
    }

    *ll = NULL;

    return NGX_OK;
}


/*
 * The head's bytes [start, end) as parts: from "copy", or where the body's
 * buffers hold them.  An empty range adds nothing.
 */

static ngx_int_t
ngx_http_sf_oauth_envelope_part(ngx_array_t *parts, ngx_chain_t *body,
    u_char *copy, off_t start, off_t end)
{
    off_t         at, size, from, to;
    ngx_str_t    *part;
    ngx_chain_t  *cl;

    if (start == end) {
        return NGX_OK;
    }

    if (copy) {
        part = ngx_array_push(parts);
        if (part == NULL) {
            return NGX_ERROR;
        }

        part->data = copy + start;
        part->len = (size_t) (end - start);

        return NGX_OK;
    }

    at = 0;

    for (cl = body; cl && at < end; cl = cl->next) {

        if (!ngx_buf_in_memory(cl->buf)) {
            continue;
        }

        size = cl->buf->last - cl->buf->pos;

        from = ngx_max(start, at);
        to = ngx_min(end, at + size);

        if (from < to) {
            part = ngx_array_push(parts);
            if (part == NULL) {
                return NGX_ERROR;
            }

            part->data = cl->buf->pos + (from - at);
            part->len = (size_t) (to - from);
        }

        at += size;
    }

    return NGX_OK;
}


/* up to "size" bytes of the body from "pos": from memory, or its file */

static ssize_t
ngx_http_sf_oauth_envelope_read(ngx_chain_t *body, off_t pos, u_char *buf,
    size_t size)
{
    off_t        n;
    size_t       got;
    ssize_t      rc;
    ngx_buf_t   *b;
    ngx_chain_t *cl;

    got = 0;

    for (cl = body; cl && got < size; cl = cl->next) {
        b = cl->buf;
        n = ngx_buf_size(b);

        if (pos >= n) {
            pos -= n;
            continue;
        }

        n = ngx_min(n - pos, (off_t) (size - got));

        if (ngx_buf_in_memory(b)) {
            ngx_memcpy(buf + got, b->pos + pos, (size_t) n);

        } else if (b->in_file) {
            /* the body's temp file, just written: in the page cache */
            rc = ngx_read_file(b->file, buf + got, (size_t) n,
                               b->file_pos + pos);
            if (rc != n) {
                return NGX_ERROR;
            }

        } else {
            n = 0;
        }

        got += (size_t) n;
        pos = 0;
    }

    return got;
}


/*
 * The encoding that the XML declaration at the envelope's start names, if
 * it has one: the names of UTF-8 and of US-ASCII that libxml2 knows
 * (xmlParseCharEncoding(), its "ASCII" and "US-ASCII" handlers) and the
 * aliases of US-ASCII that iconv knows, in any case, are UTF-8 to the
 * module; any other is refused.  A declaration that is not well-formed is
 * left to libxml2, which refuses it.
 */

static ngx_int_t
ngx_http_sf_oauth_envelope_encoding(u_char *p, size_t len, ngx_str_t *why)
{
    u_char      *last, *name, *value, quote;
    size_t       name_len, value_len;
    ngx_uint_t   i;

    static char  *utf8[] = {
        "UTF-8", "UTF8", "US-ASCII", "ASCII", "US", "ANSI_X3.4-1968",
        "ANSI_X3.4-1986", "ISO646-US", "ISO-IR-6", "IBM367", "CP367",
        "csASCII", NULL
    };

#define ngx_http_sf_oauth_xml_space(c)                                       \
    ((c) == ' ' || (c) == '\t' || (c) == '\r' || (c) == '\n')

    last = p + len;

    if (len >= 3 && p[0] == 0xef && p[1] == 0xbb && p[2] == 0xbf) {
        p += 3;
    }

    if (last - p < 6 || ngx_strncmp(p, "<?xml", 5) != 0
        || !ngx_http_sf_oauth_xml_space(p[5]))
    {
        /* no XML declaration: UTF-8 */
        return NGX_OK;
    }

    p += 5;

    for ( ;; ) {
        while (p < last && ngx_http_sf_oauth_xml_space(*p)) {
            p++;
        }

        if (p == last) {
            break;
        }

        if (*p == '?') {
            return NGX_OK;
        }

        name = p;

        while (p < last && ((*p >= 'a' && *p <= 'z')
                            || (*p >= 'A' && *p <= 'Z')))
        {
            p++;
        }

        name_len = p - name;

        while (p < last && ngx_http_sf_oauth_xml_space(*p)) {
            p++;
        }

        if (p < last && (name_len == 0 || *p != '=')) {
            return NGX_OK;
        }

        for (p++; p < last && ngx_http_sf_oauth_xml_space(*p); p++) {
            /* void */
        }

        if (p < last && *p != '"' && *p != '\'') {
            return NGX_OK;
        }

        if (p >= last) {
            break;
        }

        quote = *p++;
        value = p;

        while (p < last && *p != quote) {
            p++;
        }

        if (p == last) {
            break;
        }

        value_len = p++ - value;

        if (name_len != sizeof("encoding") - 1
            || ngx_strncmp(name, "encoding", name_len) != 0)
        {
            continue;
        }

        for (i = 0; utf8[i]; i++) {
            if (value_len == ngx_strlen(utf8[i])
                && ngx_strncasecmp(value, (u_char *) utf8[i], value_len) == 0)
            {
                return NGX_OK;
            }
        }

        ngx_str_set(why, "the envelope is not in UTF-8");
        return NGX_DECLINED;
    }

#undef ngx_http_sf_oauth_xml_space

    ngx_str_set(why, "the envelope's XML declaration does not end within "
                     "its first 1024 bytes");
    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_sf_oauth_envelope_soap_ns(const xmlChar *uri)
{
    return uri != NULL && ngx_strcmp(uri, NGX_HTTP_SF_OAUTH_SOAP_NS) == 0;
}


/* "prefix:", or nothing for a default namespace */

static ngx_str_t *
ngx_http_sf_oauth_envelope_prefix(ngx_http_sf_oauth_parse_t *ps,
    const xmlChar *prefix)
{
    size_t      len;
    ngx_str_t  *s;

    s = ngx_pcalloc(ps->pool, sizeof(ngx_str_t));
    if (s == NULL) {
        ps->error = "out of memory";
        xmlStopParser(ps->ctxt);
        return NULL;
    }

    if (prefix == NULL) {
        return s;
    }

    len = ngx_strlen(prefix);

    s->data = ngx_pnalloc(ps->pool, len + 1);
    if (s->data == NULL) {
        ps->error = "out of memory";
        xmlStopParser(ps->ctxt);
        return NULL;
    }

    ngx_memcpy(s->data, prefix, len);
    s->data[len] = ':';
    s->len = len + 1;

    return s;
}


/*
 * The body for one upstream request: the plan with "token" in it,
 * XML-escaped.  The head's parts are sent where they are; only each
 * token, with its markup, is written.  *size is its length, for the
 * Content-Length.
 */

ngx_int_t
ngx_http_sf_oauth_envelope_body(ngx_pool_t *pool,
    ngx_http_sf_oauth_envelope_t *env, ngx_str_t *token, ngx_chain_t **out,
    off_t *size)
{
    u_char       *p;
    size_t        esc;
    ngx_buf_t    *b;
    ngx_str_t    *part, *mark;
    ngx_uint_t    i;
    ngx_chain_t  *cl, **ll;

    part = env->parts.elts;
    mark = env->marks.elts;

    esc = token->len + ngx_escape_html(NULL, token->data, token->len);

    ll = out;

    for (i = 0; i < env->parts.nelts; i++) {

        if (part[i].data) {
            b = ngx_calloc_buf(pool);
            if (b == NULL) {
                return NGX_ERROR;
            }

            /* an upstream retry rewinds a request buffer to its start */
            b->start = part[i].data;
            b->pos = b->start;
            b->last = b->start + part[i].len;
            b->end = b->last;
            b->memory = 1;

        } else {
            b = ngx_create_temp_buf(pool, mark[0].len + esc + mark[1].len);
            if (b == NULL) {
                return NGX_ERROR;
            }

            p = b->pos;

            if (mark[0].len) {
                p = ngx_cpymem(p, mark[0].data, mark[0].len);
            }

            p = (u_char *) ngx_escape_html(p, token->data, token->len);

            if (mark[1].len) {
                p = ngx_cpymem(p, mark[1].data, mark[1].len);
            }

            b->last = p;
            mark += 2;
        }

        cl = ngx_alloc_chain_link(pool);
        if (cl == NULL) {
            return NGX_ERROR;
        }

        cl->buf = b;
        *ll = cl;
        ll = &cl->next;
    }

    *ll = env->rest;
    *size = env->size + env->marks.nelts / 2 * esc;

    return NGX_OK;
}
