
/*
 * Secret redaction in the error log.
 *
 * nginx itself writes the token into the log at debug level: the proxy
 * module dumps the whole upstream request header ("http proxy header:"),
 * and scripts log the values of variables such as $sf_oauth_token.  So a
 * request that carries a token gets a log writer on its connection's log
 * that replaces every known secret of every credential (the client
 * secret, the configured and rotated refresh tokens, the recent access
 * tokens) with its fingerprint before the line reaches any error_log.
 *
 * The writer stays until nginx resets the connection's log for the next
 * location, and it only refers to configuration memory, so it is safe for
 * whatever the connection logs afterwards.
 *
 * The web server flow's secrets come in the request itself: the code and
 * the state in the callback's query, the flow's cookie; the state again
 * in the 303's Location, the cookie in its Set-Cookie.  nginx logs the
 * request line, the arguments and the headers at debug level before any
 * location is chosen, and every line of a request ends with its request
 * line.  So with an sf_oauth_console, the error logs of every server, and
 * the console locations' own, write through a second writer that masks
 * the values of "code=", "state=" and "sf_oauth_connect=" in every line.
 * A server's log becomes a log of its own that writes to the one it had:
 * the log objects themselves, the cycle's among them, are never changed,
 * for the cycle's log is still written to when this module's code is
 * unloaded.
 */


#include "ngx_http_sf_oauth.h"

#include <openssl/evp.h>


static void ngx_http_sf_oauth_redact_writer(ngx_log_t *log, ngx_uint_t level,
    u_char *buf, size_t len);
static void ngx_http_sf_oauth_redact_write(ngx_log_t *log, ngx_uint_t level,
    u_char *buf, size_t len);
static size_t ngx_http_sf_oauth_redact_one(u_char *buf, size_t len,
    size_t size, u_char *secret, size_t slen);
static void ngx_http_sf_oauth_redact_flow_writer(ngx_log_t *log,
    ngx_uint_t level, u_char *buf, size_t len);
static ngx_log_t *ngx_http_sf_oauth_redact_flow_wrap(ngx_conf_t *cf,
    ngx_log_t *log);
static size_t ngx_http_sf_oauth_redact_flow_mask(u_char *buf, size_t len,
    const char *name);


/*
 * Before the token of "generation" goes on an upstream request: the
 * token is known to this worker's redaction (another worker may have got
 * it, or the state file), and the request's log writes through it.
 */

void
ngx_http_sf_oauth_redact_install(ngx_http_request_t *r,
    ngx_http_sf_oauth_cred_t *cred, ngx_uint_t generation, ngx_str_t *token)
{
    ngx_log_t                 *log;
    ngx_http_core_loc_conf_t  *clcf;

    if (cred->rt.seen_generation != generation) {
        cred->rt.seen_generation = generation;
        ngx_http_sf_oauth_redact_remember(cred, token->data, token->len);
    }

    log = r->connection->log;

    if (log->writer == ngx_http_sf_oauth_redact_writer) {
        return;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    /*
     * The connection's log is a copy of the location's error_log; the
     * writer takes over writing to that log and to the ones after it,
     * so that none of them ever sees the line before it is redacted.
     */

    log->writer = ngx_http_sf_oauth_redact_writer;
    log->wdata = clcf->error_log;
    log->next = NULL;
}


static void
ngx_http_sf_oauth_redact_writer(ngx_log_t *log, ngx_uint_t level, u_char *buf,
    size_t len)
{
    u_char                          out[NGX_MAX_ERROR_STR];
    size_t                          n;
    ngx_uint_t                      i;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    n = ngx_min(len, sizeof(out));
    ngx_memcpy(out, buf, n);

    smcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_sf_oauth_module);

    if (smcf) {
        cred = smcf->creds.elts;

        for (i = 0; i < smcf->creds.nelts; i++) {
            n = ngx_http_sf_oauth_redact(cred[i], out, n, sizeof(out));
        }
    }

    ngx_http_sf_oauth_redact_write(log, level, out, n);
}


/*
 * A redacted line to the logs that "log" wraps (log->wdata), as nginx's
 * own ngx_log_error_core() writes to a chain of logs: the first always,
 * the next ones while their level takes the line
 */

static void
ngx_http_sf_oauth_redact_write(ngx_log_t *log, ngx_uint_t level, u_char *buf,
    size_t len)
{
    ngx_log_t   *l, *first;
    ngx_uint_t   debug_connection;

    first = log->wdata;
    debug_connection = (log->log_level & NGX_LOG_DEBUG_CONNECTION) != 0;

    for (l = first; l; l = l->next) {

        if (l != first && l->log_level < level && !debug_connection) {
            break;
        }

        if (l->writer) {
            l->writer(l, level, buf, len);
            continue;
        }

        (void) ngx_write_fd(l->file->fd, buf, len);
    }
}


/* remembers a secret this worker has handled, so that logs can hide it */

void
ngx_http_sf_oauth_redact_remember(ngx_http_sf_oauth_cred_t *cred,
    u_char *secret, size_t len)
{
    ngx_uint_t  i;

    if (len == 0 || len > NGX_HTTP_SF_OAUTH_TOKEN_MAX) {
        return;
    }

    for (i = 0; i < NGX_HTTP_SF_OAUTH_SEEN; i++) {
        if (cred->rt.seen_len[i] == len
            && ngx_memcmp(cred->rt.seen[i], secret, len) == 0)
        {
            return;
        }
    }

    if (cred->refresh_token.len == len
        && ngx_memcmp(cred->refresh_token.data, secret, len) == 0)
    {
        return;
    }

    i = cred->rt.seen_next;
    cred->rt.seen_next = (i + 1) % NGX_HTTP_SF_OAUTH_SEEN;

    ngx_memcpy(cred->rt.seen[i], secret, len);
    cred->rt.seen_len[i] = len;
}


/*
 * Replaces each secret of a credential in buf with its fingerprint mark;
 * the result never grows past size bytes.  Returns the new length.
 */

size_t
ngx_http_sf_oauth_redact(ngx_http_sf_oauth_cred_t *cred, u_char *buf,
    size_t len, size_t size)
{
    ngx_uint_t  i;

    len = ngx_http_sf_oauth_redact_one(buf, len, size,
                                       cred->client_secret.data,
                                       cred->client_secret.len);
    len = ngx_http_sf_oauth_redact_one(buf, len, size,
                                       cred->refresh_token.data,
                                       cred->refresh_token.len);

    for (i = 0; i < NGX_HTTP_SF_OAUTH_SEEN; i++) {
        len = ngx_http_sf_oauth_redact_one(buf, len, size, cred->rt.seen[i],
                                           cred->rt.seen_len[i]);
    }

    return len;
}


static size_t
ngx_http_sf_oauth_redact_one(u_char *buf, size_t len, size_t size,
    u_char *secret, size_t slen)
{
    u_char  *s, *d, *end, *last, *p, tmp[NGX_MAX_ERROR_STR];
    u_char   mark[sizeof("[sf_oauth:]") - 1 + NGX_HTTP_SF_OAUTH_FP_LEN];
    size_t   n;

    if (slen == 0 || len < slen
        || ngx_strlcasestrn(buf, buf + len, secret, slen - 1) == NULL)
    {
        goto tail;
    }

    p = ngx_cpymem(mark, "[sf_oauth:", sizeof("[sf_oauth:") - 1);
    ngx_http_sf_oauth_redact_fingerprint(p, secret, slen);
    p[NGX_HTTP_SF_OAUTH_FP_LEN] = ']';

    s = buf;
    end = buf + len;
    d = tmp;
    last = tmp + ngx_min(size, sizeof(tmp));

    while (s < end && d < last) {

        if ((size_t) (end - s) >= slen && ngx_memcmp(s, secret, slen) == 0) {
            n = ngx_min(sizeof(mark), (size_t) (last - d));
            d = ngx_cpymem(d, mark, n);
            s += slen;
            continue;
        }

        *d++ = *s++;
    }

    len = d - tmp;
    ngx_memcpy(buf, tmp, len);

tail:

    /*
     * A log line cut at nginx's length limit may end in the first part of
     * a secret: that part is masked too, from 6 characters on.
     */

    if (len >= NGX_MAX_ERROR_STR - NGX_LINEFEED_SIZE && slen > 6) {
        end = buf + len - NGX_LINEFEED_SIZE;

        for (n = ngx_min(slen - 1, (size_t) (end - buf)); n >= 6; n--) {
            if (ngx_memcmp(end - n, secret, n) == 0) {
                ngx_memset(end - n, '*', n);
                break;
            }
        }
    }

    return len;
}


/* the first hex digits of the SHA-256 of a secret: safe to log */

void
ngx_http_sf_oauth_redact_fingerprint(u_char *dst, u_char *data, size_t len)
{
    u_char        md[EVP_MAX_MD_SIZE];
    unsigned int  n;

    if (EVP_Digest(data, len, md, &n, EVP_sha256(), NULL) != 1) {
        ngx_memset(dst, '?', NGX_HTTP_SF_OAUTH_FP_LEN);
        return;
    }

    ngx_hex_dump(dst, md, NGX_HTTP_SF_OAUTH_FP_LEN / 2);
}


/*
 * With an sf_oauth_console: every server's error log (which a request
 * logs to until its location is found) masks the flow's secrets.
 */

ngx_int_t
ngx_http_sf_oauth_redact_flow_init(ngx_conf_t *cf)
{
    ngx_uint_t                   s;
    ngx_http_core_srv_conf_t   **cscfp;
    ngx_http_core_loc_conf_t    *clcf;
    ngx_http_core_main_conf_t   *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);
    cscfp = cmcf->servers.elts;

    for (s = 0; s < cmcf->servers.nelts; s++) {
        clcf = cscfp[s]->ctx->loc_conf[ngx_http_core_module.ctx_index];

        clcf->error_log = ngx_http_sf_oauth_redact_flow_wrap(cf,
                                                             clcf->error_log);
        if (clcf->error_log == NULL) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * A console location's request: its connection's log (the location's
 * error_log, which may be its own) masks the flow's secrets too.
 */

void
ngx_http_sf_oauth_redact_flow_install(ngx_http_request_t *r)
{
    ngx_log_t                 *log;
    ngx_http_core_loc_conf_t  *clcf;

    log = r->connection->log;

    if (log->writer == ngx_http_sf_oauth_redact_flow_writer) {
        return;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (clcf->error_log->writer == ngx_http_sf_oauth_redact_flow_writer) {
        log->writer = clcf->error_log->writer;
        log->wdata = clcf->error_log->wdata;
        log->next = NULL;
        return;
    }

    log->writer = ngx_http_sf_oauth_redact_flow_writer;
    log->wdata = clcf->error_log;
    log->next = NULL;
}


/* a log of its own that masks the flow's secrets, then writes to "log" */

static ngx_log_t *
ngx_http_sf_oauth_redact_flow_wrap(ngx_conf_t *cf, ngx_log_t *log)
{
    ngx_log_t  *wrap;

    if (log->writer == ngx_http_sf_oauth_redact_flow_writer) {
        return log;
    }

    wrap = ngx_palloc(cf->pool, sizeof(ngx_log_t));
    if (wrap == NULL) {
        return NULL;
    }

    /* its level and file, for the checks of ngx_log_error_core() */
    *wrap = *log;

    wrap->writer = ngx_http_sf_oauth_redact_flow_writer;
    wrap->wdata = log;
    wrap->next = NULL;

    return wrap;
}


static void
ngx_http_sf_oauth_redact_flow_writer(ngx_log_t *log, ngx_uint_t level,
    u_char *buf, size_t len)
{
    u_char  out[NGX_MAX_ERROR_STR];
    size_t  n;

    n = ngx_min(len, sizeof(out));
    ngx_memcpy(out, buf, n);

    n = ngx_http_sf_oauth_redact_flow_mask(out, n, "code=");
    n = ngx_http_sf_oauth_redact_flow_mask(out, n, "state=");
    n = ngx_http_sf_oauth_redact_flow_mask(out, n, "sf_oauth_connect=");

    ngx_http_sf_oauth_redact_write(log, level, out, n);
}


/*
 * Replaces the value after each "name" in buf (up to "&", ";", a space, a
 * quote, a comma or the line's end) with "***".  Returns the new length.
 */

static size_t
ngx_http_sf_oauth_redact_flow_mask(u_char *buf, size_t len, const char *name)
{
    u_char  *p, *v, *e, *end;
    size_t   n;

    n = ngx_strlen(name);
    p = buf;
    end = buf + len;

    for ( ;; ) {
        p = ngx_strlcasestrn(p, end, (u_char *) name, n - 1);
        if (p == NULL) {
            return end - buf;
        }

        v = p + n;

        for (e = v; e < end; e++) {
            if (*e == '&' || *e == ';' || *e == ' ' || *e == '"'
                || *e == ',' || *e == '\'' || *e == CR || *e == LF)
            {
                break;
            }
        }

        if (e - v > 3) {
            ngx_memcpy(v, "***", 3);
            ngx_memmove(v + 3, e, end - e);
            end -= (e - v) - 3;
        }

        p = v;
    }
}
