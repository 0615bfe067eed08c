
/*
 * libFuzzer target: the SOAP envelope rewriter.
 *
 * The input is two bytes of setup and the request body:
 *
 *   byte 0   bits 0-1  the endpoint's namespace: partner, none, a class's,
 *                      enterprise
 *            bits 2-3  the body as 1, 2 or 3 memory buffers, or (3) one
 *                      buffer in a temp file (a memfd, at an offset)
 *            bit  4    last_buf on the last buffer
 *            bit  5    an empty last_buf buffer at the end of the chain
 *   byte 1   where the body is cut into buffers
 *
 * When the envelope is refused, the reason is not empty and the SOAP fault
 * that carries it is well-formed XML.  When it is taken, the body built
 * with the token T0K&<"x:
 *
 *   1. is *size bytes, and the chain holds exactly those;
 *   2. is well-formed XML (namespaces too) when the client's was;
 *   3. then has at least one Envelope/Header/SessionHeader/sessionId
 *      before the Body, and each holds exactly the token;
 *   4. ends with the client's bytes from its Body's start tag on.
 *
 * The outcome must be the same by a new parser context, when parsed
 * again (its head remembered), and, for the same envelope with another
 * tail, with and without the heads remembered.
 *
 * A violation aborts, after the input and the output on stderr.
 *
 * The inputs that broke these before they were fixed are in the seed
 * corpus, named repro_*.
 */

#define _GNU_SOURCE

#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_sf_oauth.h"

#include <sys/mman.h>
#include <libxml/parser.h>
#include <libxml/tree.h>


#define SOAP_NS  "http://schemas.xmlsoap.org/soap/envelope/"
#define TOKEN    "T0K&<\"x"


extern u_char  *ngx_shim_output;
extern size_t   ngx_shim_output_len;


static ngx_str_t  namespaces[] = {
    ngx_string("urn:partner.soap.sforce.com"),
    ngx_null_string,
    ngx_string("http://soap.sforce.com/schemas/class/Fuzz_Class1"),
    ngx_string("urn:enterprise.soap.sforce.com"),
};


static const uint8_t  *cur_data;
static size_t          cur_size;


static void
silent(void *ctx, const char *msg, ...)
{
}


static void
dump(const char *what, const u_char *p, size_t len)
{
    size_t  i;

    fprintf(stderr, "%s (%zu bytes): \"", what, len);

    for (i = 0; i < len; i++) {
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' && p[i] != '\\') {
            fputc(p[i], stderr);

        } else {
            fprintf(stderr, "\\x%02x", p[i]);
        }
    }

    fprintf(stderr, "\"\n");
}


static void
fail(const char *why, const u_char *out, size_t len)
{
    fprintf(stderr, "\nINVARIANT VIOLATED: %s\n", why);
    dump("input (setup bytes included)", cur_data, cur_size);

    if (out) {
        dump("output", out, len);
    }

    abort();
}


/* well-formed, namespaces included; NULL if not */


static xmlDocPtr
parse_xml(const u_char *p, size_t len)
{
    xmlDocPtr         doc;
    xmlParserCtxtPtr  ctxt;

    ctxt = xmlNewParserCtxt();
    if (ctxt == NULL) {
        abort();
    }

    doc = xmlCtxtReadMemory(ctxt, (const char *) p, (int) len, NULL, NULL,
                            XML_PARSE_NONET | XML_PARSE_NOERROR
                            | XML_PARSE_NOWARNING);

    if (doc && (!ctxt->wellFormed || !ctxt->nsWellFormed)) {
        xmlFreeDoc(doc);
        doc = NULL;
    }

    xmlFreeParserCtxt(ctxt);

    return doc;
}


static int
is(xmlNodePtr node, const char *name, const char *ns)
{
    return node->type == XML_ELEMENT_NODE
           && strcmp((const char *) node->name, name) == 0
           && (ns == NULL
               || (node->ns && strcmp((const char *) node->ns->href, ns) == 0));
}


/* the sessionIds of the head, each must hold the token; how many */

static int
check_sessions(xmlDocPtr doc, const u_char *out, size_t len)
{
    int         n;
    xmlChar    *text;
    xmlNodePtr  root, h, s, id;

    n = 0;

    root = xmlDocGetRootElement(doc);
    if (root == NULL || !is(root, "Envelope", SOAP_NS)) {
        fail("the output's root is not a SOAP Envelope", out, len);
    }

    for (h = root->children; h; h = h->next) {

        if (is(h, "Body", SOAP_NS)) {
            break;
        }

        if (!is(h, "Header", SOAP_NS)) {
            continue;
        }

        for (s = h->children; s; s = s->next) {
            if (!is(s, "SessionHeader", NULL)) {
                continue;
            }

            for (id = s->children; id; id = id->next) {
                if (!is(id, "sessionId", NULL)) {
                    continue;
                }

                n++;

                text = xmlNodeGetContent(id);

                if (text == NULL || strcmp((char *) text, TOKEN) != 0) {
                    fprintf(stderr, "sessionId content: \"%s\"\n",
                            text ? (char *) text : "(null)");
                    fail("a sessionId does not hold exactly the token",
                         out, len);
                }

                xmlFree(text);
            }
        }
    }

    return n;
}


/*
 * "<Body" or "<prefix:Body", and then 1: a space, ">" or "/"; 2: another
 * byte (libxml2 reports a start tag before it finds that it does not end)
 */

static int
body_tag(const u_char *p, size_t len)
{
    size_t  i;

    if (len < 5 || p[0] != '<') {
        return 0;
    }

    for (i = 1; i < len; i++) {
        if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z')
              || (p[i] >= '0' && p[i] <= '9') || p[i] == '_' || p[i] == '-'
              || p[i] == '.' || p[i] == ':' || p[i] >= 0x80))
        {
            break;
        }
    }

    if (i < 5 || memcmp(p + i - 4, "Body", 4) != 0
        || (i > 5 && p[i - 5] != ':'))
    {
        return 0;
    }

    if (i < len
        && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'
            || p[i] == '>' || p[i] == '/'))
    {
        return 1;
    }

    return 2;
}


/* the chain's bytes, from memory or the file */

static u_char *
concat(ngx_chain_t *cl, size_t *len)
{
    off_t    n;
    u_char  *p;
    size_t   size;

    size = 0;
    p = malloc(1);

    for ( /* void */ ; cl; cl = cl->next) {
        n = ngx_buf_size(cl->buf);

        if (n < 0) {
            fail("a buffer of the output has a negative size", NULL, 0);
        }

        p = realloc(p, size + n + 1);

        if (ngx_buf_in_memory(cl->buf)) {
            memcpy(p + size, cl->buf->pos, n);

        } else if (cl->buf->in_file) {
            if (pread(cl->buf->file->fd, p + size, n, cl->buf->file_pos)
                != n)
            {
                fail("a file buffer of the output cannot be read", NULL, 0);
            }

        } else if (n) {
            fail("a buffer of the output is neither in memory nor in a file",
                 NULL, 0);
        }

        size += n;
    }

    *len = size;

    return p;
}


static ngx_buf_t *
mem_buf(ngx_pool_t *pool, u_char *p, size_t len)
{
    ngx_buf_t  *b;

    b = ngx_calloc_buf(pool);
    b->start = p;
    b->pos = p;
    b->last = p + len;
    b->end = p + len;
    b->memory = 1;

    return b;
}


static void
check_fault(ngx_pool_t *pool, ngx_str_t *why)
{
    u_char              *want;
    size_t               len;
    xmlChar             *text;
    xmlDocPtr            doc;
    xmlNodePtr           node;
    ngx_http_request_t   r;

    ngx_memzero(&r, sizeof(ngx_http_request_t));
    r.pool = pool;
    r.main = &r;

    free(ngx_shim_output);
    ngx_shim_output = NULL;
    ngx_shim_output_len = 0;

    (void) ngx_http_sf_oauth_answer_fault(&r, NGX_HTTP_BAD_REQUEST, why);

    if (ngx_shim_output == NULL) {
        fail("no SOAP fault was sent", NULL, 0);
    }

    doc = parse_xml(ngx_shim_output, ngx_shim_output_len);
    if (doc == NULL) {
        dump("why", why->data, why->len);
        fail("the SOAP fault is not well-formed XML", ngx_shim_output,
             ngx_shim_output_len);
    }

    node = xmlDocGetRootElement(doc);
    node = node ? node->children : NULL;                  /* Body */
    node = node ? node->children : NULL;                  /* Fault */
    node = node ? node->children : NULL;                  /* faultcode */
    node = node ? node->next : NULL;                      /* faultstring */

    text = node ? xmlNodeGetContent(node) : NULL;

    len = sizeof("sf_oauth: ") - 1 + why->len;
    want = malloc(len + 1);
    memcpy(want, "sf_oauth: ", sizeof("sf_oauth: ") - 1);
    memcpy(want + sizeof("sf_oauth: ") - 1, why->data, why->len);
    want[len] = '\0';

    /* the parser turns \r and \r\n into \n */
    if (text == NULL
        || (memchr(why->data, '\r', why->len) == NULL
            && strcmp((char *) text, (char *) want) != 0))
    {
        dump("why", why->data, why->len);
        fail("the SOAP fault's faultstring is not the reason",
             ngx_shim_output, ngx_shim_output_len);
    }

    free(want);
    xmlFree(text);
    xmlFreeDoc(doc);
}


/*
 * The worker's parser context is reset for each envelope, and the plans
 * of heads parsed before are given again to envelopes that begin with the
 * same bytes: the outcome of a parse (after ngx_http_sf_oauth_envelope_exit()
 * when "fresh": a new context, nothing remembered) must be the outcome
 * "rc", "env", "why" of another parse of the same envelope.  No namespace,
 * encoding, error or name of the envelopes before may count, nor any byte
 * past the head that decided a remembered plan.
 */

static void
same_outcome(ngx_pool_t *pool, ngx_chain_t *chain, ngx_str_t *ns,
    ngx_int_t rc, ngx_http_sf_oauth_envelope_t *env, ngx_str_t *why,
    int fresh, const char *what)
{
    ngx_str_t                      why2, *a, *b;
    ngx_int_t                      rc2;
    ngx_uint_t                     i;
    ngx_http_sf_oauth_envelope_t   env2;

    if (fresh) {
        ngx_http_sf_oauth_envelope_exit();
    }

    rc2 = ngx_http_sf_oauth_envelope_parse(pool, chain, ns, &env2, &why2);

    if (rc2 != rc
        || why2.len != why->len
        || (why->len && ngx_memcmp(why2.data, why->data, why->len) != 0))
    {
        fail(what, why->data, why->len);
    }

    if (rc != NGX_OK) {
        return;
    }

    if (env2.call != env->call || env2.size != env->size
        || env2.parts.nelts != env->parts.nelts
        || env2.marks.nelts != env->marks.nelts)
    {
        fail(what, NULL, 0);
    }

    a = env->parts.elts;
    b = env2.parts.elts;

    for (i = 0; i < env->parts.nelts; i++) {
        if (a[i].len != b[i].len
            || (a[i].data == NULL) != (b[i].data == NULL)
            || (a[i].len && ngx_memcmp(a[i].data, b[i].data, a[i].len) != 0))
        {
            fail(what, NULL, 0);
        }
    }

    a = env->marks.elts;
    b = env2.marks.elts;

    for (i = 0; i < env->marks.nelts; i++) {
        if (a[i].len != b[i].len
            || (a[i].len && ngx_memcmp(a[i].data, b[i].data, a[i].len) != 0))
        {
            fail(what, NULL, 0);
        }
    }
}


/*
 * The same envelope with another tail: its bytes from "keep" on are the
 * input's own, reversed.  Parsed after the input, whose head is
 * remembered if it was taken, then by a new parser: the two must agree,
 * wherever "keep" falls, before or after the head that decided the plan.
 */

static void
other_tail(ngx_pool_t *pool, u_char *body, size_t len, size_t keep,
    ngx_str_t *ns)
{
    u_char                        *copy;
    size_t                         i;
    ngx_str_t                      why;
    ngx_int_t                      rc;
    ngx_chain_t                   *chain;
    ngx_http_sf_oauth_envelope_t   env;

    copy = ngx_pnalloc(pool, len ? len : 1);
    ngx_memcpy(copy, body, keep);

    for (i = keep; i < len; i++) {
        copy[i] = body[len - 1 - (i - keep)];
    }

    chain = ngx_alloc_chain_link(pool);
    chain->buf = mem_buf(pool, copy, len);
    chain->buf->last_buf = 1;
    chain->next = NULL;

    rc = ngx_http_sf_oauth_envelope_parse(pool, chain, ns, &env, &why);

    same_outcome(pool, chain, ns, rc, &env, &why, 1,
                 "an envelope with another tail is planned otherwise by a "
                 "remembered head than by a new parse");
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                            fd, split;
    u_char                        *body, *out;
    size_t                         len, out_len, rest, head, cut[2];
    off_t                          total;
    ngx_str_t                      token, why;
    ngx_int_t                      rc;
    xmlDocPtr                      doc, orig;
    ngx_buf_t                     *b;
    ngx_uint_t                     i, nbufs;
    ngx_pool_t                    *pool;
    ngx_file_t                     file;
    ngx_chain_t                   *chain, *cl, **ll, *res;
    ngx_http_sf_oauth_envelope_t   env;

    static int       inited;
    static ngx_log_t  log;   /* level 0: no debug line is written */

    if (!inited) {
        ngx_http_sf_oauth_envelope_init();
        xmlSetGenericErrorFunc(NULL, silent);
        inited = 1;
    }

    if (size < 2) {
        return 0;
    }

    cur_data = data;
    cur_size = size;

    len = size - 2;
    split = data[1];
    fd = -1;

    pool = ngx_create_pool(4096, &log);

    /* a block of its own, so that a read past the body is caught */
    body = malloc(len ? len : 1);
    memcpy(body, data + 2, len);

    /* the chain */

    nbufs = (data[0] >> 2) & 3;

    cut[0] = len * split / 255;
    cut[1] = cut[0] + (len - cut[0]) / 2;

    chain = NULL;
    ll = &chain;

    if (nbufs == 3) {
        fd = memfd_create("fuzz_envelope", 0);
        if (fd == -1
            || write(fd, "garbage", 7) != 7
            || (len && write(fd, body, len) != (ssize_t) len))
        {
            abort();
        }

        ngx_memzero(&file, sizeof(ngx_file_t));
        file.fd = fd;

        b = ngx_calloc_buf(pool);
        b->in_file = 1;
        b->file = &file;
        b->file_pos = 7;
        b->file_last = 7 + len;

        *ll = ngx_alloc_chain_link(pool);
        (*ll)->buf = b;
        ll = &(*ll)->next;

    } else {
        size_t  from = 0, to;

        for (i = 0; i <= nbufs; i++) {
            to = (i == nbufs) ? len : cut[i];

            *ll = ngx_alloc_chain_link(pool);
            (*ll)->buf = mem_buf(pool, body + from, to - from);
            ll = &(*ll)->next;

            from = to;
        }
    }

    if (data[0] & 0x20) {
        *ll = ngx_alloc_chain_link(pool);
        (*ll)->buf = mem_buf(pool, body + len, 0);
        ll = &(*ll)->next;
    }

    *ll = NULL;

    for (cl = chain; cl->next; cl = cl->next) { /* void */ }

    if (data[0] & 0x30) {
        cl->buf->last_buf = 1;
    }

    /* the parse, by the context that the inputs before left */

    rc = ngx_http_sf_oauth_envelope_parse(pool, chain, &namespaces[data[0] & 3],
                                          &env, &why);

    /* again: a head taken is remembered, and its plan given again */

    same_outcome(pool, chain, &namespaces[data[0] & 3], rc, &env, &why, 0,
                 "a remembered plan differs from the parse that made it");

    /* another tail, from a place that byte 1 chooses too */

    other_tail(pool, body, len, len - len * split / 255,
               &namespaces[data[0] & 3]);

    /*
     * the input by a new context and nothing remembered: the worker's
     * reused context must not differ; what this parse remembers is there
     * for the next input
     */

    same_outcome(pool, chain, &namespaces[data[0] & 3], rc, &env, &why, 1,
                 "a reused parser context, or a remembered plan, and a new "
                 "parse disagree");

    if (rc == NGX_DECLINED) {
        if (why.len == 0 || why.data == NULL) {
            fail("an envelope is refused without a reason", NULL, 0);
        }

        check_fault(pool, &why);
        goto done;
    }

    if (rc != NGX_OK) {
        fail("the parse failed with no memory shortage", NULL, 0);
    }

    if (env.marks.nelts < 2) {
        fail("a plan with no place for the token", NULL, 0);
    }

    token.data = (u_char *) TOKEN;
    token.len = sizeof(TOKEN) - 1;

    if (ngx_http_sf_oauth_envelope_body(pool, &env, &token, &res, &total)
        != NGX_OK)
    {
        fail("the body failed with no memory shortage", NULL, 0);
    }

    /* 1. the size */

    out = concat(res, &out_len);

    if (total < 0 || (size_t) total != out_len) {
        fprintf(stderr, "*size %ld, the chain's bytes %zu\n", (long) total,
                out_len);
        fail("*size is not the length of the output", out, out_len);
    }

    /* 4. the rest: the client's bytes from its Body on */

    /* the rest: the plan's shadows of the body, after the head's bufs */

    rest = 0;

    for (cl = env.rest; cl; cl = cl->next) {
        rest += ngx_buf_size(cl->buf);
    }

    head = out_len - rest;

    if (rest > len) {
        fail("the output's rest is longer than the input", out, out_len);
    }

    switch (body_tag(body + len - rest, rest)) {

    case 0:
        fail("the output's rest does not start at a Body start tag",
             out, out_len);

    case 2:
        fail("the Body's start tag is not well-formed, and is taken",
             out, out_len);
    }

    if (memcmp(out + head, body + len - rest, rest) != 0) {
        fail("the output's rest is not the input's", out, out_len);
    }

    if (len - rest > NGX_HTTP_SF_OAUTH_HEAD_MAX) {
        fail("the head is longer than the limit", out, out_len);
    }

    /* 2. and 3., when the client's envelope is well-formed as a whole */

    orig = parse_xml(body, len);

    if (orig) {
        doc = parse_xml(out, out_len);

        if (doc == NULL) {
            fail("a well-formed envelope becomes ill-formed", out, out_len);
        }

        if (check_sessions(doc, out, out_len) == 0) {
            fail("the output has no sessionId in its Header", out, out_len);
        }

        xmlFreeDoc(doc);
        xmlFreeDoc(orig);
    }

    free(out);

done:

    if (fd != -1) {
        close(fd);
    }

    free(body);
    ngx_destroy_pool(pool);

    return 0;
}
