
/*
 * Where the primary of an sf_oauth_redis block is, asked again before each
 * connection to it, per worker.
 *
 * Three answers:
 *
 *   the configuration  "server" is an IP literal or a unix socket, or a
 *                      host name resolved when the configuration was
 *                      loaded (http has no "resolver": frozen);
 *   the resolver       "server" is a host name and http has a "resolver":
 *                      it is resolved again, with nginx's resolver and
 *                      its cache (valid=, the TTL), before each
 *                      connection: a managed Redis's endpoint that moved on
 *                      a failover is followed;
 *   a sentinel         "sentinel": each sentinel in turn is asked
 *                      SENTINEL get-master-addr-by-name MASTER, on a
 *                      connection of its own, within the block's timeout;
 *                      an error or an unknown master: the next one.
 *
 * With sentinels, each worker also keeps one connection to one of them,
 * subscribed to +switch-master: a message that names the block's master
 * is passed to the client (ngx_http_sf_oauth_redis.c), which closes its
 * connections to the old address and asks here again.  The subscription
 * sends a PING every second, so that a sentinel gone silent is noticed
 * within the block's timeout; one that breaks is opened again on the next
 * sentinel, after 100 ms doubling to 1 s.
 *
 * The client asks (ngx_http_sf_oauth_primary_locate) and tells nothing
 * else: that the primary was wrong (READONLY, a ROLE not master, a refused
 * connection) is said by asking again.  Everything runs on the worker's
 * event loop: nginx's resolver, nginx's connections and timers, TLS to the
 * sentinels as to the primary ("tls on" in the block), hiredis only to
 * format the commands and read the replies.
 *
 * It is one concern, though over a thousand lines: the answer to "where
 * is the primary", with the two ways of getting it that a name needs (the
 * resolver, and a sentinel's short connection: connect, TLS, AUTH, one
 * question or the subscription).  It calls no other file of the module's
 * but the timer's; the Redis client calls it.
 */


#include "ngx_http_sf_oauth.h"

#include <hiredis/hiredis.h>


#define NGX_HTTP_SF_OAUTH_PRIMARY_RETRY_MIN  100
#define NGX_HTTP_SF_OAUTH_PRIMARY_RETRY_MAX  1000

/* how often the subscription sends a PING, ms */
#define NGX_HTTP_SF_OAUTH_PRIMARY_PING       1000

/* a sentinel's reply is short: an address, a subscription, a message */
#define NGX_HTTP_SF_OAUTH_PRIMARY_REPLY_MAX  4096


/* a connection to a sentinel: a question (lc), or the subscription */
struct ngx_http_sf_oauth_primary_s {
    ngx_http_sf_oauth_redis_t       *rd;
    ngx_http_sf_oauth_locate_t      *lc;
    ngx_http_sf_oauth_redis_host_t  *sentinel;

    ngx_peer_connection_t            peer;
    ngx_log_t                        log;
    ngx_resolver_ctx_t              *resolving;
    ngx_sockaddr_t                   sockaddr;
    socklen_t                        socklen;
    ngx_str_t                        name;
    u_char                           name_buf[NGX_SOCKADDR_STRLEN];

    redisReader                     *reader;
    size_t                           read_bytes;
    u_char                          *out;
    size_t                           out_len;
    size_t                           out_size;
    /* replies due before the last: the AUTH's */
    ngx_uint_t                       auth;
    ngx_uint_t                       subscribed;
    /* a PING of the subscription's not answered yet */
    ngx_uint_t                       pinging;

    /* the subscription's */
    ngx_uint_t                       next;
    ngx_event_t                      retry;
    ngx_event_t                      ping;
    ngx_msec_t                       backoff;
    ngx_uint_t                       down_logged;
    ngx_http_sf_oauth_moved_pt       moved;
};


static void ngx_http_sf_oauth_primary_fixed(ngx_http_sf_oauth_locate_t *lc,
    ngx_addr_t *addr, ngx_str_t *host, ngx_uint_t is_ip);
static ngx_int_t ngx_http_sf_oauth_primary_resolve(
    ngx_http_sf_oauth_redis_t *rd, ngx_str_t *host,
    ngx_resolver_ctx_t **slot, ngx_resolver_handler_pt handler, void *data);
static ngx_int_t ngx_http_sf_oauth_primary_take(ngx_resolver_ctx_t *ctx,
    in_port_t port, ngx_sockaddr_t *sockaddr, socklen_t *socklen,
    ngx_str_t *name, u_char *buf, const char **why);
static void ngx_http_sf_oauth_primary_resolved(ngx_resolver_ctx_t *ctx);
static void ngx_http_sf_oauth_primary_answer(ngx_http_sf_oauth_locate_t *lc,
    ngx_int_t rc, const char *why);
static void ngx_http_sf_oauth_primary_ask(ngx_http_sf_oauth_locate_t *lc);
static ngx_http_sf_oauth_primary_t *ngx_http_sf_oauth_primary_conn(
    ngx_http_sf_oauth_redis_t *rd, ngx_http_sf_oauth_redis_host_t *sentinel);
static void ngx_http_sf_oauth_primary_start(ngx_http_sf_oauth_primary_t *s);
static void ngx_http_sf_oauth_primary_sentinel_resolved(
    ngx_resolver_ctx_t *ctx);
static void ngx_http_sf_oauth_primary_connect(ngx_http_sf_oauth_primary_t *s);
static void ngx_http_sf_oauth_primary_connected(ngx_event_t *ev);
#if (NGX_SSL)
static void ngx_http_sf_oauth_primary_handshake(ngx_connection_t *c);
#endif
static void ngx_http_sf_oauth_primary_send(ngx_http_sf_oauth_primary_t *s);
static ngx_int_t ngx_http_sf_oauth_primary_format(
    ngx_http_sf_oauth_primary_t *s, ngx_uint_t argc, ngx_str_t *argv);
static void ngx_http_sf_oauth_primary_write(ngx_event_t *ev);
static void ngx_http_sf_oauth_primary_read(ngx_event_t *ev);
static ngx_int_t ngx_http_sf_oauth_primary_reply(
    ngx_http_sf_oauth_primary_t *s, redisReply *r);
static ngx_int_t ngx_http_sf_oauth_primary_master(
    ngx_http_sf_oauth_primary_t *s, redisReply *r);
static ngx_int_t ngx_http_sf_oauth_primary_literal(
    ngx_http_sf_oauth_locate_t *lc);
static void ngx_http_sf_oauth_primary_message(ngx_http_sf_oauth_primary_t *s,
    redisReply *r);
static void ngx_http_sf_oauth_primary_fail(ngx_http_sf_oauth_primary_t *s,
    const char *why);
static void ngx_http_sf_oauth_primary_watch_again(ngx_event_t *ev);
static void ngx_http_sf_oauth_primary_ping(ngx_event_t *ev);
static ngx_uint_t ngx_http_sf_oauth_primary_is_pong(redisReply *r);
static void ngx_http_sf_oauth_primary_close(ngx_http_sf_oauth_primary_t *s);
static void ngx_http_sf_oauth_primary_dummy(ngx_event_t *ev);
static u_char *ngx_http_sf_oauth_primary_log_error(ngx_log_t *log,
    u_char *buf, size_t len);


/*
 * Where the primary is, for a connection about to be opened: the answer
 * goes to lc->handler, at once when it is known, or later.  lc->rd,
 * lc->handler and lc->data are the caller's.
 */

void
ngx_http_sf_oauth_primary_locate(ngx_http_sf_oauth_locate_t *lc)
{
    ngx_http_sf_oauth_redis_t  *rd;

    rd = lc->rd;

    ngx_http_sf_oauth_primary_cancel(lc);

    lc->why = NULL;
    ngx_str_null(&lc->sentinel);

    if (rd->sentinels) {
        lc->tried = 0;
        ngx_http_sf_oauth_primary_ask(lc);
        return;
    }

    if (rd->primary.resolved) {
        ngx_http_sf_oauth_primary_fixed(lc, &rd->primary.addr,
                                        &rd->primary.host, rd->primary.is_ip);
        lc->source = "configuration";
        lc->handler(lc, NGX_OK);
        return;
    }

    /* a host name, and a resolver */

    if (ngx_http_sf_oauth_primary_resolve(rd, &rd->primary.host,
                                          &lc->resolving,
                                          ngx_http_sf_oauth_primary_resolved,
                                          lc)
        != NGX_OK)
    {
        ngx_http_sf_oauth_primary_answer(lc, NGX_ERROR,
                                         "the resolver cannot be asked");
    }
}


/* the question is dropped: its connection closed, its handler not called */

void
ngx_http_sf_oauth_primary_cancel(ngx_http_sf_oauth_locate_t *lc)
{
    ngx_http_sf_oauth_primary_t  *s;

    if (lc->resolving) {
        ngx_resolve_name_done(lc->resolving);
        lc->resolving = NULL;
    }

    s = lc->asking;

    if (s) {
        lc->asking = NULL;
        ngx_http_sf_oauth_primary_close(s);
        ngx_free(s);
    }
}


static void
ngx_http_sf_oauth_primary_fixed(ngx_http_sf_oauth_locate_t *lc,
    ngx_addr_t *addr, ngx_str_t *host, ngx_uint_t is_ip)
{
    size_t  n;

    ngx_memcpy(&lc->sockaddr, addr->sockaddr, addr->socklen);
    lc->socklen = addr->socklen;

    n = ngx_min(addr->name.len, sizeof(lc->name_buf));
    ngx_memcpy(lc->name_buf, addr->name.data, n);
    lc->name.data = lc->name_buf;
    lc->name.len = n;

    n = ngx_min(host->len, sizeof(lc->host_buf) - 1);
    *ngx_cpymem(lc->host_buf, host->data, n) = '\0';
    lc->host.data = lc->host_buf;
    lc->host.len = n;
    lc->host_is_ip = is_ip;
}


static ngx_int_t
ngx_http_sf_oauth_primary_resolve(ngx_http_sf_oauth_redis_t *rd,
    ngx_str_t *host, ngx_resolver_ctx_t **slot,
    ngx_resolver_handler_pt handler, void *data)
{
    ngx_resolver_ctx_t  *ctx;

    if (rd->resolver == NULL) {
        return NGX_ERROR;
    }

    ctx = ngx_resolve_start(rd->resolver, NULL);
    if (ctx == NULL || ctx == NGX_NO_RESOLVER) {
        return NGX_ERROR;
    }

    ctx->name = *host;
    ctx->handler = handler;
    ctx->data = data;
    ctx->timeout = rd->resolver_timeout;
    ctx->cancelable = 1;

    /* the handler may run at once, from the resolver's cache */
    *slot = ctx;

    if (ngx_resolve_name(ctx) != NGX_OK) {
        *slot = NULL;
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* the resolver's answer: its first address, with the port; ctx is done */

static ngx_int_t
ngx_http_sf_oauth_primary_take(ngx_resolver_ctx_t *ctx, in_port_t port,
    ngx_sockaddr_t *sockaddr, socklen_t *socklen, ngx_str_t *name, u_char *buf,
    const char **why)
{
    ngx_uint_t  i;

    if (ctx->state || ctx->naddrs == 0) {
        *why = ctx->state ? ngx_resolver_strerror(ctx->state)
                          : "no address";
        ngx_resolve_name_done(ctx);
        return NGX_ERROR;
    }

    /* IPv4 first, as nginx's resolver lists them; any one of them */

    i = ctx->naddrs > 1 ? ngx_random() % ctx->naddrs : 0;

    ngx_memcpy(sockaddr, ctx->addrs[i].sockaddr, ctx->addrs[i].socklen);
    *socklen = ctx->addrs[i].socklen;

    ngx_resolve_name_done(ctx);

    ngx_inet_set_port(&sockaddr->sockaddr, port);

    name->data = buf;
    name->len = ngx_sock_ntop(&sockaddr->sockaddr, *socklen, buf,
                              NGX_SOCKADDR_STRLEN, 1);

    return NGX_OK;
}


/* the server's host name, resolved */

static void
ngx_http_sf_oauth_primary_resolved(ngx_resolver_ctx_t *ctx)
{
    ngx_http_sf_oauth_locate_t *lc = ctx->data;

    size_t                      n;
    in_port_t                   port;
    const char                 *why;
    ngx_http_sf_oauth_redis_t  *rd;

    rd = lc->rd;
    lc->resolving = NULL;

    port = rd->sentinels ? lc->port : rd->primary.port;

    if (ngx_http_sf_oauth_primary_take(ctx, port, &lc->sockaddr,
                                       &lc->socklen, &lc->name,
                                       lc->name_buf, &why)
        != NGX_OK)
    {
        ngx_http_sf_oauth_primary_answer(lc, NGX_ERROR, why);
        return;
    }

    if (!rd->sentinels) {
        n = ngx_min(rd->primary.host.len, sizeof(lc->host_buf) - 1);
        *ngx_cpymem(lc->host_buf, rd->primary.host.data, n) = '\0';
        lc->host.data = lc->host_buf;
        lc->host.len = n;
        lc->host_is_ip = 0;
        lc->source = "resolver";
    }

    ngx_log_debug3(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                   "sf_oauth: redis \"%V\": \"%V\" resolved to \"%V\"",
                   &rd->name, &ctx->name, &lc->name);

    lc->handler(lc, NGX_OK);
}


static void
ngx_http_sf_oauth_primary_answer(ngx_http_sf_oauth_locate_t *lc, ngx_int_t rc,
    const char *why)
{
    u_char  *p;

    if (rc != NGX_OK) {
        p = ngx_snprintf(lc->why_buf, sizeof(lc->why_buf) - 1, "%s", why);
        *p = '\0';
        lc->why = (char *) lc->why_buf;
    }

    lc->handler(lc, rc);
}


/* the next sentinel, or none left: the primary is not found this time */

static void
ngx_http_sf_oauth_primary_ask(ngx_http_sf_oauth_locate_t *lc)
{
    ngx_http_sf_oauth_redis_t       *rd;
    ngx_http_sf_oauth_primary_t     *s;
    ngx_http_sf_oauth_redis_host_t  *h;

    rd = lc->rd;

    if (lc->tried == rd->sentinels->nelts) {
        if (lc->why == NULL) {
            lc->why = "no sentinel answered";
        }

        lc->handler(lc, NGX_ERROR);
        return;
    }

    h = rd->sentinels->elts;

    s = ngx_http_sf_oauth_primary_conn(rd, &h[lc->next]);
    if (s == NULL) {
        ngx_http_sf_oauth_primary_answer(lc, NGX_ERROR, "out of memory");
        return;
    }

    lc->next = (lc->next + 1) % rd->sentinels->nelts;
    lc->tried++;

    s->lc = lc;
    lc->asking = s;

    ngx_http_sf_oauth_primary_start(s);
}


static ngx_http_sf_oauth_primary_t *
ngx_http_sf_oauth_primary_conn(ngx_http_sf_oauth_redis_t *rd,
    ngx_http_sf_oauth_redis_host_t *sentinel)
{
    ngx_http_sf_oauth_primary_t  *s;

    s = ngx_calloc(sizeof(ngx_http_sf_oauth_primary_t), ngx_cycle->log);
    if (s == NULL) {
        return NULL;
    }

    s->rd = rd;
    s->sentinel = sentinel;

    return s;
}


static void
ngx_http_sf_oauth_primary_start(ngx_http_sf_oauth_primary_t *s)
{
    ngx_http_sf_oauth_redis_host_t  *h;

    h = s->sentinel;

    if (h->resolved) {
        ngx_memcpy(&s->sockaddr, h->addr.sockaddr, h->addr.socklen);
        s->socklen = h->addr.socklen;
        s->name = h->addr.name;
        ngx_http_sf_oauth_primary_connect(s);
        return;
    }

    if (ngx_http_sf_oauth_primary_resolve(s->rd, &h->host, &s->resolving,
                                    ngx_http_sf_oauth_primary_sentinel_resolved,
                                    s)
        != NGX_OK)
    {
        ngx_http_sf_oauth_primary_fail(s, "the resolver cannot be asked");
    }
}


static void
ngx_http_sf_oauth_primary_sentinel_resolved(ngx_resolver_ctx_t *ctx)
{
    ngx_http_sf_oauth_primary_t *s = ctx->data;

    u_char       why[128], *p;
    const char  *err;

    s->resolving = NULL;

    if (ngx_http_sf_oauth_primary_take(ctx, s->sentinel->port, &s->sockaddr,
                                       &s->socklen, &s->name, s->name_buf,
                                       &err)
        != NGX_OK)
    {
        p = ngx_snprintf(why, sizeof(why) - 1, "cannot be resolved: %s",
                         err);
        *p = '\0';
        ngx_http_sf_oauth_primary_fail(s, (char *) why);
        return;
    }

    ngx_http_sf_oauth_primary_connect(s);
}


static void
ngx_http_sf_oauth_primary_connect(ngx_http_sf_oauth_primary_t *s)
{
    ngx_int_t          rv;
    ngx_connection_t  *c;

    ngx_memzero(&s->peer, sizeof(ngx_peer_connection_t));

    s->log = *ngx_cycle->log;
    s->log.handler = ngx_http_sf_oauth_primary_log_error;
    s->log.data = NULL;
    s->log.action = "connecting to a Redis sentinel";

    s->peer.sockaddr = &s->sockaddr.sockaddr;
    s->peer.socklen = s->socklen;
    s->peer.name = &s->name;
    s->peer.get = ngx_event_get_peer;
    s->peer.log = &s->log;
    s->peer.log_error = NGX_ERROR_INFO;

    rv = ngx_event_connect_peer(&s->peer);

    if (rv == NGX_ERROR || rv == NGX_DECLINED || rv == NGX_BUSY) {
        ngx_http_sf_oauth_primary_fail(s, "cannot connect");
        return;
    }

    c = s->peer.connection;
    c->data = s;
    c->log = &s->log;
    c->read->log = c->log;
    c->write->log = c->log;
    s->log.connection = c->number;

    c->pool = ngx_create_pool(1024, c->log);
    if (c->pool == NULL) {
        ngx_http_sf_oauth_primary_fail(s, "ngx_create_pool() failed");
        return;
    }

    s->reader = redisReaderCreate();
    if (s->reader == NULL) {
        ngx_http_sf_oauth_primary_fail(s, "redisReaderCreate() failed");
        return;
    }

    c->read->handler = ngx_http_sf_oauth_primary_connected;
    c->write->handler = ngx_http_sf_oauth_primary_connected;

    /* the whole exchange, up to the subscription, within the timeout */
    ngx_add_timer(c->read, s->rd->timeout);

    if (rv == NGX_OK) {
        ngx_http_sf_oauth_primary_connected(c->write);
    }
}


static void
ngx_http_sf_oauth_primary_connected(ngx_event_t *ev)
{
    int                           err;
    socklen_t                     len;
    ngx_connection_t             *c;
    ngx_http_sf_oauth_primary_t  *s;

    c = ev->data;
    s = c->data;

    if (ev->timedout) {
        ngx_http_sf_oauth_primary_fail(s, "timed out");
        return;
    }

    err = 0;
    len = sizeof(int);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len) == -1) {
        err = ngx_socket_errno;
    }

    if (err) {
        ngx_log_debug0(NGX_LOG_DEBUG_EVENT, c->log, err, "connect() failed");
        ngx_http_sf_oauth_primary_fail(s, "connection refused or "
                                          "unreachable");
        return;
    }

#if (NGX_SSL)

    if (s->rd->ssl) {

        if (ngx_ssl_create_connection(s->rd->ssl, c,
                                      NGX_SSL_BUFFER|NGX_SSL_CLIENT)
            != NGX_OK)
        {
            ngx_http_sf_oauth_primary_fail(s, "TLS setup failed");
            return;
        }

        if (!s->sentinel->is_ip) {
            SSL_set_tlsext_host_name(c->ssl->connection,
                                     (char *) s->sentinel->host.data);
        }

        s->log.action = "performing the TLS handshake with a Redis sentinel";

        if (ngx_ssl_handshake(c) == NGX_AGAIN) {
            c->ssl->handler = ngx_http_sf_oauth_primary_handshake;
            return;
        }

        ngx_http_sf_oauth_primary_handshake(c);
        return;
    }

#endif

    ngx_http_sf_oauth_primary_send(s);
}


#if (NGX_SSL)

static void
ngx_http_sf_oauth_primary_handshake(ngx_connection_t *c)
{
    long                             rv;
    X509                            *cert;
    ngx_http_sf_oauth_primary_t     *s;
    ngx_http_sf_oauth_redis_host_t  *h;

    s = c->data;
    h = s->sentinel;

    if (!c->ssl->handshaked) {
        ngx_http_sf_oauth_primary_fail(s, "TLS handshake failed: check that "
                                          "the sentinel speaks TLS");
        return;
    }

    if (s->rd->ssl_verify) {
        rv = SSL_get_verify_result(c->ssl->connection);

        if (rv != X509_V_OK) {
            ngx_http_sf_oauth_primary_fail(s, "its TLS certificate does not "
                                              "verify; check ca_file");
            return;
        }

        cert = SSL_get_peer_certificate(c->ssl->connection);

        if (cert == NULL
            || (h->is_ip
                ? X509_check_ip_asc(cert, (char *) h->host.data, 0) != 1
                : X509_check_host(cert, (char *) h->host.data, h->host.len,
                                  0, NULL) != 1))
        {
            if (cert) {
                X509_free(cert);
            }

            ngx_http_sf_oauth_primary_fail(s, "its TLS certificate is not "
                                              "for its address");
            return;
        }

        X509_free(cert);
    }

    ngx_http_sf_oauth_primary_send(s);
}

#endif


/* AUTH if the sentinels want a password, then the question or SUBSCRIBE */

static void
ngx_http_sf_oauth_primary_send(ngx_http_sf_oauth_primary_t *s)
{
    ngx_str_t                   argv[3];
    ngx_connection_t           *c;
    ngx_http_sf_oauth_redis_t  *rd;

    rd = s->rd;
    c = s->peer.connection;

    s->auth = 0;

    if (rd->sentinel_password.len) {
        ngx_str_set(&argv[0], "AUTH");
        argv[1] = rd->sentinel_password;

        if (ngx_http_sf_oauth_primary_format(s, 2, argv) != NGX_OK) {
            ngx_http_sf_oauth_primary_fail(s, "out of memory");
            return;
        }

        s->auth = 1;
    }

    if (s->lc) {
        ngx_str_set(&argv[0], "SENTINEL");
        ngx_str_set(&argv[1], "get-master-addr-by-name");
        argv[2] = rd->sentinel_master;
        s->log.action = "asking a Redis sentinel where the primary is";

        if (ngx_http_sf_oauth_primary_format(s, 3, argv) != NGX_OK) {
            ngx_http_sf_oauth_primary_fail(s, "out of memory");
            return;
        }

    } else {
        ngx_str_set(&argv[0], "SUBSCRIBE");
        ngx_str_set(&argv[1], "+switch-master");
        s->log.action = "subscribing to a Redis sentinel's +switch-master";

        if (ngx_http_sf_oauth_primary_format(s, 2, argv) != NGX_OK) {
            ngx_http_sf_oauth_primary_fail(s, "out of memory");
            return;
        }
    }

    c->read->handler = ngx_http_sf_oauth_primary_read;
    c->write->handler = ngx_http_sf_oauth_primary_write;

    ngx_http_sf_oauth_primary_write(c->write);
}


static ngx_int_t
ngx_http_sf_oauth_primary_format(ngx_http_sf_oauth_primary_t *s,
    ngx_uint_t argc, ngx_str_t *argv)
{
    int          n;
    char        *cmd;
    u_char      *p;
    size_t       lens[3];
    ngx_uint_t   i;
    const char  *args[3];

    for (i = 0; i < argc; i++) {
        args[i] = (const char *) argv[i].data;
        lens[i] = argv[i].len;
    }

    n = redisFormatCommandArgv(&cmd, (int) argc, args, lens);
    if (n < 0) {
        return NGX_ERROR;
    }

    p = ngx_alloc(s->out_len + n, ngx_cycle->log);
    if (p == NULL) {
        ngx_explicit_memzero(cmd, n);
        redisFreeCommand(cmd);
        return NGX_ERROR;
    }

    if (s->out) {
        ngx_memcpy(p, s->out, s->out_len);
        ngx_explicit_memzero(s->out, s->out_size);
        ngx_free(s->out);
    }

    ngx_memcpy(p + s->out_len, cmd, n);
    s->out = p;
    s->out_len += n;
    s->out_size = s->out_len;

    /* AUTH holds the sentinels' password */
    ngx_explicit_memzero(cmd, n);
    redisFreeCommand(cmd);

    return NGX_OK;
}


static void
ngx_http_sf_oauth_primary_write(ngx_event_t *ev)
{
    ssize_t                       n;
    ngx_connection_t             *c;
    ngx_http_sf_oauth_primary_t  *s;

    c = ev->data;
    s = c->data;

    while (s->out_len) {
        n = c->send(c, s->out, s->out_len);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n <= 0) {
            ngx_http_sf_oauth_primary_fail(s, "write failed");
            return;
        }

        ngx_memmove(s->out, s->out + n, s->out_len - n);
        s->out_len -= n;
    }

    if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
        ngx_http_sf_oauth_primary_fail(s, "write failed");
    }
}


static void
ngx_http_sf_oauth_primary_read(ngx_event_t *ev)
{
    void                         *reply;
    u_char                        buf[4096];
    ssize_t                       n;
    ngx_int_t                     rc;
    ngx_connection_t             *c;
    ngx_http_sf_oauth_primary_t  *s;

    c = ev->data;
    s = c->data;

    if (ev->timedout) {
        ngx_http_sf_oauth_primary_fail(s, "timed out");
        return;
    }

    for ( ;; ) {
        n = c->recv(c, buf, sizeof(buf));

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            ngx_http_sf_oauth_primary_fail(s, "the connection was closed");
            return;
        }

        s->read_bytes += n;

        if (redisReaderFeed(s->reader, (char *) buf, n) != REDIS_OK) {
            ngx_http_sf_oauth_primary_fail(s, "its reply does not parse");
            return;
        }

        for ( ;; ) {
            reply = NULL;

            if (redisReaderGetReply(s->reader, &reply) != REDIS_OK) {
                ngx_http_sf_oauth_primary_fail(s, "its reply does not parse");
                return;
            }

            if (reply == NULL) {
                break;
            }

            s->read_bytes = s->reader->len - s->reader->pos;

            rc = ngx_http_sf_oauth_primary_reply(s, reply);

            freeReplyObject(reply);

            if (rc != NGX_AGAIN) {
                /* answered, failed, or closed: s may be gone */
                return;
            }
        }

        if (s->read_bytes > NGX_HTTP_SF_OAUTH_PRIMARY_REPLY_MAX) {
            ngx_http_sf_oauth_primary_fail(s, "its reply is too large");
            return;
        }
    }

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_http_sf_oauth_primary_fail(s, "read failed");
    }
}


/* NGX_AGAIN: more replies are wanted; else s was answered or failed */

static ngx_int_t
ngx_http_sf_oauth_primary_reply(ngx_http_sf_oauth_primary_t *s,
    redisReply *r)
{
    ngx_connection_t  *c;

    if (s->auth) {
        s->auth = 0;

        if (r->type == REDIS_REPLY_ERROR) {
            /* the sentinel's words, never the password */
            ngx_http_sf_oauth_primary_fail(s, "it refused AUTH: check "
                                              "sentinel_password");
            return NGX_ERROR;
        }

        return NGX_AGAIN;
    }

    if (s->lc) {
        return ngx_http_sf_oauth_primary_master(s, r);
    }

    if (!s->subscribed) {
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 3
            || r->element[0]->type != REDIS_REPLY_STRING
            || r->element[0]->len != sizeof("subscribe") - 1
            || ngx_strncasecmp((u_char *) r->element[0]->str,
                               (u_char *) "subscribe",
                               sizeof("subscribe") - 1) != 0)
        {
            ngx_http_sf_oauth_primary_fail(s, r->type == REDIS_REPLY_ERROR
                                              ? "it refused SUBSCRIBE (a "
                                                "password it wants?)"
                                              : "it did not subscribe");
            return NGX_ERROR;
        }

        c = s->peer.connection;

        if (c->read->timer_set) {
            ngx_del_timer(c->read);
        }

        s->subscribed = 1;
        s->backoff = NGX_HTTP_SF_OAUTH_PRIMARY_RETRY_MIN;
        s->log.action = "listening to a Redis sentinel's +switch-master";

        if (s->down_logged) {
            s->down_logged = 0;

            if (ngx_worker == 0) {
                ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                              "sf_oauth: redis \"%V\": sentinel \"%V\" is "
                              "reachable again", &s->rd->name,
                              &s->sentinel->text);
            }
        }

        ngx_log_debug2(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                       "sf_oauth: redis \"%V\": subscribed to sentinel "
                       "\"%V\"", &s->rd->name, &s->sentinel->text);

        /* a sentinel gone silent is noticed by its PING's deadline */
        ngx_add_timer(&s->ping, NGX_HTTP_SF_OAUTH_PRIMARY_PING);

        return NGX_AGAIN;
    }

    if (s->pinging && ngx_http_sf_oauth_primary_is_pong(r)) {
        s->pinging = 0;

        c = s->peer.connection;

        if (c->read->timer_set) {
            ngx_del_timer(c->read);
        }

        return NGX_AGAIN;
    }

    ngx_http_sf_oauth_primary_message(s, r);

    return NGX_AGAIN;
}


/* a PING's answer on a subscribed connection: ["pong", ""] */

static ngx_uint_t
ngx_http_sf_oauth_primary_is_pong(redisReply *r)
{
    return r->type == REDIS_REPLY_ARRAY && r->elements >= 1
           && r->element[0]->type == REDIS_REPLY_STRING
           && r->element[0]->len == sizeof("pong") - 1
           && ngx_strncasecmp((u_char *) r->element[0]->str,
                              (u_char *) "pong", sizeof("pong") - 1) == 0;
}


/* the sentinel's answer: [ip, port], nil for a master it does not know */

static ngx_int_t
ngx_http_sf_oauth_primary_master(ngx_http_sf_oauth_primary_t *s,
    redisReply *r)
{
    size_t                       n;
    ngx_int_t                    port;
    ngx_http_sf_oauth_locate_t  *lc;
    ngx_http_sf_oauth_redis_t   *rd;

    lc = s->lc;
    rd = s->rd;

    if (r->type == REDIS_REPLY_NIL) {
        ngx_http_sf_oauth_primary_fail(s, "it does not know the master: "
                                          "check sentinel_master");
        return NGX_ERROR;
    }

    if (r->type == REDIS_REPLY_ERROR) {
        ngx_http_sf_oauth_primary_fail(s, "it answered with an error");
        return NGX_ERROR;
    }

    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2
        || r->element[0]->type != REDIS_REPLY_STRING
        || r->element[1]->type != REDIS_REPLY_STRING
        || r->element[0]->len == 0
        || r->element[0]->len >= sizeof(lc->host_buf))
    {
        ngx_http_sf_oauth_primary_fail(s, "its answer is not an address");
        return NGX_ERROR;
    }

    port = ngx_atoi((u_char *) r->element[1]->str, r->element[1]->len);

    if (port < 1 || port > 65535) {
        ngx_http_sf_oauth_primary_fail(s, "its answer is not an address");
        return NGX_ERROR;
    }

    n = r->element[0]->len;
    *ngx_cpymem(lc->host_buf, r->element[0]->str, n) = '\0';
    lc->host.data = lc->host_buf;
    lc->host.len = n;
    lc->source = "sentinel";
    lc->sentinel = s->sentinel->text;

    /* done with the sentinel */

    lc->asking = NULL;
    ngx_http_sf_oauth_primary_close(s);
    ngx_free(s);

    lc->port = (in_port_t) port;

    if (ngx_http_sf_oauth_primary_literal(lc) == NGX_OK) {
        lc->name.data = lc->name_buf;
        lc->name.len = ngx_sock_ntop(&lc->sockaddr.sockaddr, lc->socklen,
                                     lc->name_buf, NGX_SOCKADDR_STRLEN, 1);
        lc->host_is_ip = 1;

        ngx_log_debug2(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                       "sf_oauth: redis \"%V\": the sentinels say the "
                       "primary is \"%V\"", &rd->name, &lc->name);

        lc->handler(lc, NGX_OK);
        return NGX_OK;
    }

    /* a host name (the sentinels' resolve-hostnames): resolved in turn */

    lc->host_is_ip = 0;

    if (ngx_http_sf_oauth_primary_resolve(rd, &lc->host, &lc->resolving,
                                          ngx_http_sf_oauth_primary_resolved,
                                          lc)
        != NGX_OK)
    {
        ngx_http_sf_oauth_primary_answer(lc, NGX_ERROR,
                                         "the sentinels name the primary "
                                         "by a host name, and http has no "
                                         "\"resolver\"");
    }

    return NGX_OK;
}


/* the sentinel's address as an IP literal, with lc->port, or NGX_DECLINED */

static ngx_int_t
ngx_http_sf_oauth_primary_literal(ngx_http_sf_oauth_locate_t *lc)
{
    in_addr_t             a;
    struct sockaddr_in   *sin;
#if (NGX_HAVE_INET6)
    struct sockaddr_in6  *sin6;
#endif

    ngx_memzero(&lc->sockaddr, sizeof(ngx_sockaddr_t));

    a = ngx_inet_addr(lc->host.data, lc->host.len);

    if (a != INADDR_NONE) {
        sin = &lc->sockaddr.sockaddr_in;
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = a;
        sin->sin_port = htons(lc->port);
        lc->socklen = sizeof(struct sockaddr_in);
        return NGX_OK;
    }

#if (NGX_HAVE_INET6)
    sin6 = &lc->sockaddr.sockaddr_in6;

    if (ngx_inet6_addr(lc->host.data, lc->host.len,
                       sin6->sin6_addr.s6_addr)
        == NGX_OK)
    {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(lc->port);
        lc->socklen = sizeof(struct sockaddr_in6);
        return NGX_OK;
    }
#endif

    return NGX_DECLINED;
}


/* ["message", "+switch-master", "MASTER OLD-IP OLD-PORT NEW-IP NEW-PORT"] */

static void
ngx_http_sf_oauth_primary_message(ngx_http_sf_oauth_primary_t *s,
    redisReply *r)
{
    u_char                     *p, *last, *field[5];
    size_t                      len[5];
    ngx_str_t                   addr;
    ngx_uint_t                  i;
    ngx_http_sf_oauth_redis_t  *rd;
    u_char                      buf[NGX_SOCKADDR_STRLEN + 8];

    rd = s->rd;

    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3
        || r->element[2]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    p = (u_char *) r->element[2]->str;
    last = p + r->element[2]->len;

    for (i = 0; i < 5; i++) {
        while (p < last && *p == ' ') {
            p++;
        }

        field[i] = p;

        while (p < last && *p != ' ') {
            p++;
        }

        len[i] = p - field[i];

        if (len[i] == 0) {
            return;
        }
    }

    if (len[0] != rd->sentinel_master.len
        || ngx_strncmp(field[0], rd->sentinel_master.data, len[0]) != 0
        || len[3] + len[4] + 4 > sizeof(buf))
    {
        return;
    }

    /* "ip:port" as nginx writes it: [ ] around IPv6 */

    if (ngx_strlchr(field[3], field[3] + len[3], ':')) {
        addr.len = ngx_sprintf(buf, "[%*s]:%*s", len[3], field[3], len[4],
                               field[4])
                   - buf;

    } else {
        addr.len = ngx_sprintf(buf, "%*s:%*s", len[3], field[3], len[4],
                               field[4])
                   - buf;
    }

    addr.data = buf;

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                   "sf_oauth: redis \"%V\": +switch-master to \"%V\"",
                   &rd->name, &addr);

    s->moved(rd, &addr);
}


/*
 * A sentinel failed us: a question goes to the next one; the
 * subscription is opened again on the next one after a backoff.
 */

static void
ngx_http_sf_oauth_primary_fail(ngx_http_sf_oauth_primary_t *s,
    const char *why)
{
    u_char                      *p;
    ngx_http_sf_oauth_redis_t   *rd;
    ngx_http_sf_oauth_locate_t  *lc;

    rd = s->rd;
    lc = s->lc;

    ngx_http_sf_oauth_primary_close(s);

    if (lc) {
        p = ngx_snprintf(lc->why_buf, sizeof(lc->why_buf) - 1,
                         "sentinel \"%V\": %s%s", &s->sentinel->text, why,
                         lc->tried < rd->sentinels->nelts ? "" :
                         "; no sentinel told where the primary is");
        *p = '\0';
        lc->why = (char *) lc->why_buf;

        ngx_log_debug2(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                       "sf_oauth: redis \"%V\": %s", &rd->name, lc->why);

        lc->asking = NULL;
        ngx_free(s);

        ngx_http_sf_oauth_primary_ask(lc);
        return;
    }

    /* the subscription */

    if (!s->down_logged && ngx_worker == 0) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sf_oauth: redis \"%V\": sentinel \"%V\": %s; "
                      "+switch-master is listened to on the next sentinel",
                      &rd->name, &s->sentinel->text, why);
        s->down_logged = 1;

    } else {
        ngx_log_debug3(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                       "sf_oauth: redis \"%V\": sentinel \"%V\": %s",
                       &rd->name, &s->sentinel->text, why);
    }

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    if (!s->retry.timer_set) {
        ngx_add_timer(&s->retry, s->backoff);
    }

    s->backoff = ngx_min(s->backoff * 2, NGX_HTTP_SF_OAUTH_PRIMARY_RETRY_MAX);
}


/* the worker's subscription to +switch-master, with sentinels */

ngx_int_t
ngx_http_sf_oauth_primary_watch(ngx_http_sf_oauth_redis_t *rd,
    ngx_cycle_t *cycle, ngx_http_sf_oauth_moved_pt moved)
{
    ngx_http_sf_oauth_primary_t     *s;
    ngx_http_sf_oauth_redis_host_t  *h;

    if (rd->sentinels == NULL) {
        return NGX_OK;
    }

    h = rd->sentinels->elts;

    s = ngx_http_sf_oauth_primary_conn(rd, &h[0]);
    if (s == NULL) {
        return NGX_ERROR;
    }

    s->moved = moved;
    s->backoff = NGX_HTTP_SF_OAUTH_PRIMARY_RETRY_MIN;

    /* each worker starts on another sentinel */
    s->next = ngx_worker % rd->sentinels->nelts;
    s->sentinel = &h[s->next];

    ngx_http_sf_oauth_timer_init(&s->retry,
                                 ngx_http_sf_oauth_primary_watch_again,
                                 cycle->log);
    ngx_http_sf_oauth_timer_init(&s->ping, ngx_http_sf_oauth_primary_ping,
                                 cycle->log);

    rd->watch = s;

    ngx_http_sf_oauth_primary_start(s);

    return NGX_OK;
}


void
ngx_http_sf_oauth_primary_unwatch(ngx_http_sf_oauth_redis_t *rd)
{
    ngx_http_sf_oauth_primary_t  *s;

    s = rd->watch;

    if (s == NULL) {
        return;
    }

    rd->watch = NULL;

    if (s->retry.timer_set) {
        ngx_del_timer(&s->retry);
    }

    ngx_http_sf_oauth_primary_close(s);
    ngx_free(s);
}


/* the sentinel this worker listens to for +switch-master, if subscribed */

void
ngx_http_sf_oauth_primary_watched(ngx_http_sf_oauth_redis_t *rd,
    ngx_str_t *sentinel)
{
    if (rd->watch == NULL || !rd->watch->subscribed) {
        ngx_str_null(sentinel);
        return;
    }

    *sentinel = rd->watch->sentinel->text;
}


static void
ngx_http_sf_oauth_primary_watch_again(ngx_event_t *ev)
{
    ngx_http_sf_oauth_primary_t     *s;
    ngx_http_sf_oauth_redis_host_t  *h;

    s = (ngx_http_sf_oauth_primary_t *)
            ((u_char *) ev - offsetof(ngx_http_sf_oauth_primary_t, retry));

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    h = s->rd->sentinels->elts;
    s->next = (s->next + 1) % s->rd->sentinels->nelts;
    s->sentinel = &h[s->next];

    ngx_http_sf_oauth_primary_start(s);
}


/* the subscription's PING, answered within the block's timeout */

static void
ngx_http_sf_oauth_primary_ping(ngx_event_t *ev)
{
    ngx_str_t                     argv[1];
    ngx_connection_t             *c;
    ngx_http_sf_oauth_primary_t  *s;

    s = (ngx_http_sf_oauth_primary_t *)
            ((u_char *) ev - offsetof(ngx_http_sf_oauth_primary_t, ping));

    if (!s->subscribed || ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    c = s->peer.connection;

    if (!s->pinging) {
        ngx_str_set(&argv[0], "PING");

        if (ngx_http_sf_oauth_primary_format(s, 1, argv) != NGX_OK) {
            ngx_http_sf_oauth_primary_fail(s, "out of memory");
            return;
        }

        s->pinging = 1;
        ngx_add_timer(c->read, s->rd->timeout);

        ngx_http_sf_oauth_primary_write(c->write);

        if (!s->subscribed) {
            /* the write failed */
            return;
        }
    }

    ngx_add_timer(ev, NGX_HTTP_SF_OAUTH_PRIMARY_PING);
}


static void
ngx_http_sf_oauth_primary_close(ngx_http_sf_oauth_primary_t *s)
{
    ngx_connection_t  *c;

    if (s->resolving) {
        ngx_resolve_name_done(s->resolving);
        s->resolving = NULL;
    }

    if (s->ping.timer_set) {
        ngx_del_timer(&s->ping);
    }

    c = s->peer.connection;
    s->peer.connection = NULL;
    s->subscribed = 0;
    s->pinging = 0;
    s->auth = 0;
    s->read_bytes = 0;

    if (c) {
#if (NGX_SSL)
        if (c->ssl) {
            c->ssl->no_wait_shutdown = 1;
            c->ssl->no_send_shutdown = 1;
            (void) ngx_ssl_shutdown(c);
        }
#endif

        c->read->handler = ngx_http_sf_oauth_primary_dummy;
        c->write->handler = ngx_http_sf_oauth_primary_dummy;

        if (c->pool) {
            ngx_destroy_pool(c->pool);
            c->pool = NULL;
        }

        ngx_close_connection(c);
    }

    if (s->reader) {
        redisReaderFree(s->reader);
        s->reader = NULL;
    }

    if (s->out) {
        ngx_explicit_memzero(s->out, s->out_size);
        ngx_free(s->out);
        s->out = NULL;
        s->out_len = 0;
        s->out_size = 0;
    }
}


static void
ngx_http_sf_oauth_primary_dummy(ngx_event_t *ev)
{
}


static u_char *
ngx_http_sf_oauth_primary_log_error(ngx_log_t *log, u_char *buf, size_t len)
{
    if (log->action == NULL) {
        return buf;
    }

    return ngx_snprintf(buf, len, " while %s", log->action);
}
