
/*
 * A Redis client on nginx's own connections, for the fleet.
 *
 * The choice: hiredis's reply reader and command formatter over nginx's
 * ngx_peer_connection_t, not hiredis's async context.  Debian 12's hiredis
 * (0.14) has no timers, no timeouts and no TLS in its async API, and its
 * connect resolves host names with a blocking getaddrinfo().  nginx's
 * connection gives the worker's event loop, its timers and TLS through
 * nginx's OpenSSL; hiredis still parses every reply (RESP), so no parser
 * is written by hand.
 *
 * Where the primary is, ngx_http_sf_oauth_primary.c says before each
 * connection: the configuration's address, the resolver's, or the
 * sentinels'.  When it may have moved (a resolved name, sentinels), the
 * connection's setup checks with ROLE that the server is the primary; a
 * ROLE not "master", a -READONLY reply to any command, or the sentinels'
 * +switch-master to another address close the connections, as a failure
 * does (their commands fail), and the next connection asks again.  The
 * command connection asks ROLE again every second, as the subscriber
 * PINGs: a primary demoted under a worker that only reads is left too.
 *
 * Each worker keeps two connections per sf_oauth_redis block: one for
 * commands, whose replies come back in order and go to each command's
 * callback, and one subscribed to the fleet's channel, whose messages go
 * to one callback.  A connection that fails is closed, its commands fail
 * (their callbacks get NULL), and it is opened again after a backoff of
 * 100 ms doubling to 1 s.  A command on a connection that is not ready
 * fails at once: the caller falls back, it never waits for Redis.
 *
 * Nothing from Redis is trusted.  A reply must come within the timeout of
 * its command, counted from when the command was sent, however it
 * trickles in; it may be NGX_HTTP_SF_OAUTH_REDIS_REPLY_MAX bytes at most,
 * whatever it announces or holds.  The subscriber, which otherwise only
 * listens, sends a PING every second, so that a server that went silent
 * is noticed too; the command connection sends its ROLE then.
 *
 * Each connection logs with a copy of the cycle's log, whose action says
 * what the connection does: connecting, the TLS handshake, its setup, the
 * command whose reply it waits for (each caller names its own), or
 * listening on the channel.  What nginx logs of the socket says so, as of
 * an upstream's; the module's own lines name the block and the server.
 *
 * The client knows none of its callers.
 *
 * This file is one concern, though it is over a thousand lines: one
 * connection's life (connect, TLS, AUTH/SELECT setup, commands and their
 * callbacks in order, the reply limits and deadlines, PING, close and
 * reconnect), which is one state machine.  The sf_oauth_redis block that
 * configures it is ngx_http_sf_oauth_redis_conf.c.
 */


#include "ngx_http_sf_oauth.h"

#include <hiredis/hiredis.h>


#define NGX_HTTP_SF_OAUTH_REDIS_CLOSED      0
#define NGX_HTTP_SF_OAUTH_REDIS_CONNECTING  1
#define NGX_HTTP_SF_OAUTH_REDIS_HANDSHAKE   2
#define NGX_HTTP_SF_OAUTH_REDIS_READY       3
#define NGX_HTTP_SF_OAUTH_REDIS_LOCATING    4

/*
 * Reconnects: 100 ms, doubling to 1 s, not more: a token that a node got
 * under the fleet's lease but could not write back (the connection broke)
 * must reach Redis before that lease expires, or the next node refreshes
 * with the refresh token it rotated.
 */
#define NGX_HTTP_SF_OAUTH_REDIS_RETRY_MIN   100
#define NGX_HTTP_SF_OAUTH_REDIS_RETRY_MAX   1000

/* how often the subscriber sends a PING, and the other ROLE, ms */
#define NGX_HTTP_SF_OAUTH_REDIS_PING        1000

/* whose a command is: the caller's, the setup's, the connection's own */
#define NGX_HTTP_SF_OAUTH_REDIS_CALLER      0
#define NGX_HTTP_SF_OAUTH_REDIS_SETUP       1
#define NGX_HTTP_SF_OAUTH_REDIS_OWN         2

/* the task hiredis's reader is on, and the count of an array's elements */
#if (HIREDIS_MAJOR >= 1)
#define ngx_http_sf_oauth_redis_task(r)     ((r)->task[(r)->ridx])
typedef size_t  ngx_http_sf_oauth_redis_count_t;
#else
#define ngx_http_sf_oauth_redis_task(r)     (&(r)->rstack[(r)->ridx])
typedef int  ngx_http_sf_oauth_redis_count_t;
#endif


typedef struct {
    ngx_queue_t                    queue;
    ngx_http_sf_oauth_reply_pt     handler;
    void                          *data;
    /*
     * NGX_HTTP_SF_OAUTH_REDIS_SETUP: of the connection's handshake (AUTH,
     * SELECT, ROLE, SUBSCRIBE); _OWN: its PING or ROLE once ready
     */
    ngx_uint_t                     setup;
    /* when its reply is due, from when it was sent */
    ngx_msec_t                     deadline;
    /* for the log, while its reply is waited for */
    char                          *action;
} ngx_http_sf_oauth_redis_cmd_t;


struct ngx_http_sf_oauth_redis_conn_s {
    ngx_http_sf_oauth_redis_t     *rd;
    ngx_peer_connection_t          peer;
    /* the connection's log: the cycle's, with an action of its own */
    ngx_log_t                      log;
    ngx_uint_t                     state;
    ngx_uint_t                     subscriber;

    redisReader                   *reader;
    ngx_queue_t                    pending;

    /* the bytes of the reply being read so far; whether it is too large */
    size_t                         reply_bytes;
    ngx_uint_t                     too_large;

    u_char                        *out;
    size_t                         out_len;
    size_t                         out_size;

    ngx_event_t                    retry;
    ngx_event_t                    ping;
    ngx_msec_t                     backoff;
    ngx_uint_t                     setup_left;

    /* for the log: why the last attempt failed, once per outage */
    ngx_uint_t                     down_logged;
    /* for the log: a connect() that failed, once per outage */
    ngx_uint_t                     connect_logged;

    /* the command connection's server, from INFO server; 0: not known */
    size_t                         run_id_len;
    u_char                         run_id[NGX_HTTP_SF_OAUTH_RUN_ID_LEN];

    /* what ROLE said of the server ("master"); 0: not known */
    size_t                         role_len;
    u_char                         role[16];
    /* the periodic ROLE: refused at the setup, or waiting for its reply */
    ngx_uint_t                     role_refused;
    ngx_uint_t                     role_asked;

    /* when a command of the caller's last got a reply not an error */
    ngx_msec_t                     ok_at;
    ngx_uint_t                     ok_seen;

    ngx_http_sf_oauth_reply_pt     message;
    ngx_http_sf_oauth_redis_ready_pt  ready;
    void                          *data;

    /* where the primary is, asked before each connection */
    ngx_http_sf_oauth_locate_t     locate;
};


static void ngx_http_sf_oauth_redis_connect(ngx_http_sf_oauth_redis_conn_t *rc);
static void ngx_http_sf_oauth_redis_located(ngx_http_sf_oauth_locate_t *lc,
    ngx_int_t rv);
static void ngx_http_sf_oauth_redis_role(void *reply, void *data);
static ngx_uint_t ngx_http_sf_oauth_redis_readonly(redisReply *r);
static const char *ngx_http_sf_oauth_redis_next(
    ngx_http_sf_oauth_redis_t *rd);
static void ngx_http_sf_oauth_redis_replica(
    ngx_http_sf_oauth_redis_conn_t *rc, ngx_str_t *said);
static void ngx_http_sf_oauth_redis_role_again(void *reply, void *data);
static void ngx_http_sf_oauth_redis_moved(ngx_http_sf_oauth_redis_t *rd,
    ngx_str_t *addr);
static void ngx_http_sf_oauth_redis_retry(ngx_event_t *ev);
static void ngx_http_sf_oauth_redis_connected(ngx_event_t *ev);
#if (NGX_SSL)
static void ngx_http_sf_oauth_redis_handshake(ngx_connection_t *c);
#endif
static void ngx_http_sf_oauth_redis_setup(ngx_http_sf_oauth_redis_conn_t *rc);
static void ngx_http_sf_oauth_redis_setup_done(void *reply, void *data);
static void ngx_http_sf_oauth_redis_setup_next(
    ngx_http_sf_oauth_redis_conn_t *rc);
static ngx_uint_t ngx_http_sf_oauth_redis_moves(
    ngx_http_sf_oauth_redis_conn_t *rc);
static void ngx_http_sf_oauth_redis_setup_info(void *reply, void *data);
static void ngx_http_sf_oauth_redis_ping(ngx_event_t *ev);
static void ngx_http_sf_oauth_redis_pong(void *reply, void *data);
static void ngx_http_sf_oauth_redis_proven(
    ngx_http_sf_oauth_redis_conn_t *rc);
static void ngx_http_sf_oauth_redis_read(ngx_event_t *ev);
static ngx_uint_t ngx_http_sf_oauth_redis_is_message(redisReply *r);
static ngx_uint_t ngx_http_sf_oauth_redis_oversized(
    ngx_http_sf_oauth_redis_conn_t *rc);
static void *ngx_http_sf_oauth_redis_array(const redisReadTask *task,
    ngx_http_sf_oauth_redis_count_t elements);
static void ngx_http_sf_oauth_redis_deadline(
    ngx_http_sf_oauth_redis_conn_t *rc);
static void ngx_http_sf_oauth_redis_write(ngx_event_t *ev);
static ngx_int_t ngx_http_sf_oauth_redis_flush(
    ngx_http_sf_oauth_redis_conn_t *rc);
static ngx_int_t ngx_http_sf_oauth_redis_send(
    ngx_http_sf_oauth_redis_conn_t *rc, ngx_uint_t argc, ngx_str_t *argv,
    ngx_http_sf_oauth_reply_pt handler, void *data, ngx_uint_t setup,
    char *action);
static void ngx_http_sf_oauth_redis_fail(ngx_http_sf_oauth_redis_conn_t *rc,
    ngx_uint_t level, const char *why);
static void ngx_http_sf_oauth_redis_broken(ngx_http_sf_oauth_redis_conn_t *rc,
    const char *why);
static void ngx_http_sf_oauth_redis_close(ngx_http_sf_oauth_redis_conn_t *rc);
static void ngx_http_sf_oauth_redis_dummy(ngx_event_t *ev);
static u_char *ngx_http_sf_oauth_redis_log_error(ngx_log_t *log, u_char *buf,
    size_t len);


/* hiredis's reply functions, but for arrays of more elements than fit */
static redisReplyObjectFunctions  ngx_http_sf_oauth_redis_functions;
static void *(*ngx_http_sf_oauth_redis_create_array)(
    const redisReadTask *task, ngx_http_sf_oauth_redis_count_t elements);


/* the per-worker connections of one sf_oauth_redis block */

ngx_int_t
ngx_http_sf_oauth_redis_init(ngx_http_sf_oauth_redis_t *rd, ngx_cycle_t *cycle,
    ngx_http_sf_oauth_reply_pt message, ngx_http_sf_oauth_redis_ready_pt ready,
    void *data)
{
    ngx_uint_t                       i;
    ngx_http_sf_oauth_redis_conn_t  *rc;

    for (i = 0; i < 2; i++) {
        rc = ngx_pcalloc(cycle->pool, sizeof(ngx_http_sf_oauth_redis_conn_t));
        if (rc == NULL) {
            return NGX_ERROR;
        }

        rc->rd = rd;
        rc->subscriber = i;
        rc->backoff = NGX_HTTP_SF_OAUTH_REDIS_RETRY_MIN;
        rc->ready = ready;
        rc->data = data;
        rc->locate.rd = rd;
        rc->locate.handler = ngx_http_sf_oauth_redis_located;
        rc->locate.data = rc;
        ngx_queue_init(&rc->pending);

        ngx_http_sf_oauth_timer_init(&rc->retry,
                                     ngx_http_sf_oauth_redis_retry,
                                     cycle->log);
        ngx_http_sf_oauth_timer_init(&rc->ping,
                                     ngx_http_sf_oauth_redis_ping,
                                     cycle->log);

        if (i == 0) {
            rd->cmd = rc;

        } else {
            rc->message = message;
            rd->sub = rc;
        }

        ngx_http_sf_oauth_redis_connect(rc);
    }

    return ngx_http_sf_oauth_primary_watch(rd, cycle,
                                           ngx_http_sf_oauth_redis_moved);
}


void
ngx_http_sf_oauth_redis_exit(ngx_http_sf_oauth_redis_t *rd)
{
    ngx_http_sf_oauth_redis_conn_t  *rc;
    ngx_uint_t                       i;

    for (i = 0; i < 2; i++) {
        rc = i ? rd->sub : rd->cmd;

        if (rc == NULL) {
            continue;
        }

        if (rc->retry.timer_set) {
            ngx_del_timer(&rc->retry);
        }

        ngx_http_sf_oauth_redis_close(rc);
    }

    ngx_http_sf_oauth_primary_unwatch(rd);
}


ngx_uint_t
ngx_http_sf_oauth_redis_ready(ngx_http_sf_oauth_redis_t *rd)
{
    return rd->cmd && rd->cmd->state == NGX_HTTP_SF_OAUTH_REDIS_READY;
}


/* whether the command connection is being set up, not failed */

ngx_uint_t
ngx_http_sf_oauth_redis_connecting(ngx_http_sf_oauth_redis_t *rd)
{
    return rd->cmd
           && (rd->cmd->state == NGX_HTTP_SF_OAUTH_REDIS_LOCATING
               || rd->cmd->state == NGX_HTTP_SF_OAUTH_REDIS_CONNECTING
               || rd->cmd->state == NGX_HTTP_SF_OAUTH_REDIS_HANDSHAKE);
}


/*
 * What the command connection is on, for the status: the primary it is
 * set up with, or ready on, where its address came from ("configuration",
 * "resolver", "sentinel") and the sentinel that named it, what ROLE said
 * of it, the sentinel listened to, and how long ago a command last
 * succeeded.
 */

void
ngx_http_sf_oauth_redis_view(ngx_http_sf_oauth_redis_t *rd,
    ngx_http_sf_oauth_redis_view_t *v)
{
    ngx_http_sf_oauth_redis_conn_t  *rc;

    ngx_memzero(v, sizeof(ngx_http_sf_oauth_redis_view_t));

    rc = rd->cmd;

    ngx_http_sf_oauth_primary_watched(rd, &v->watched);

    v->ok_ago = (rc && rc->ok_seen)
                ? (ngx_msec_int_t) (ngx_current_msec - rc->ok_at) : -1;

    if (rc == NULL || rc->state == NGX_HTTP_SF_OAUTH_REDIS_CLOSED
        || rc->state == NGX_HTTP_SF_OAUTH_REDIS_LOCATING)
    {
        return;
    }

    v->primary = rc->locate.name;
    v->source = rc->locate.source;
    v->sentinel = rc->locate.sentinel;
    v->role.data = rc->role;
    v->role.len = rc->role_len;
}


/*
 * The run_id of the server that the command connection was set up with
 * (INFO server), which tells a new primary from the old one; empty when
 * not known (not connected, or INFO refused to an ACL user).
 */

void
ngx_http_sf_oauth_redis_run_id(ngx_http_sf_oauth_redis_t *rd,
    ngx_str_t *run_id)
{
    if (rd->cmd == NULL || rd->cmd->state != NGX_HTTP_SF_OAUTH_REDIS_READY) {
        ngx_str_null(run_id);
        return;
    }

    run_id->data = rd->cmd->run_id;
    run_id->len = rd->cmd->run_id_len;
}


/*
 * Sends a command; its reply (a redisReply, or NULL when the connection
 * failed first) goes to handler.  NGX_DECLINED: Redis is not connected,
 * and handler is not called.  "action" is for the connection's log while
 * the reply is waited for: "reading the fleet's record from Redis".
 */

ngx_int_t
ngx_http_sf_oauth_redis_command(ngx_http_sf_oauth_redis_t *rd,
    ngx_uint_t argc, ngx_str_t *argv, ngx_http_sf_oauth_reply_pt handler,
    void *data, char *action)
{
    if (rd->cmd == NULL || rd->cmd->state != NGX_HTTP_SF_OAUTH_REDIS_READY) {
        return NGX_DECLINED;
    }

    return ngx_http_sf_oauth_redis_send(rd->cmd, argc, argv, handler, data,
                                        NGX_HTTP_SF_OAUTH_REDIS_CALLER,
                                        action);
}


static void
ngx_http_sf_oauth_redis_connect(ngx_http_sf_oauth_redis_conn_t *rc)
{
    rc->state = NGX_HTTP_SF_OAUTH_REDIS_LOCATING;

    /* the answer may come at once: the configuration's address */
    ngx_http_sf_oauth_primary_locate(&rc->locate);
}


static void
ngx_http_sf_oauth_redis_located(ngx_http_sf_oauth_locate_t *lc, ngx_int_t rv)
{
    ngx_connection_t                *c;
    ngx_http_sf_oauth_redis_t       *rd;
    ngx_http_sf_oauth_redis_conn_t  *rc;

    rc = lc->data;
    rd = rc->rd;

    if (rv != NGX_OK) {
        rc->state = NGX_HTTP_SF_OAUTH_REDIS_CLOSED;
        ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_ERR, lc->why);
        return;
    }

    ngx_memzero(&rc->peer, sizeof(ngx_peer_connection_t));

    /* the cycle's log stays as it is: the action is the connection's */

    rc->log = *ngx_cycle->log;
    rc->log.handler = ngx_http_sf_oauth_redis_log_error;
    rc->log.data = NULL;
    rc->log.action = rc->subscriber
                     ? "connecting to Redis for the fleet's channel"
                     : "connecting to Redis";

    rc->peer.sockaddr = &lc->sockaddr.sockaddr;
    rc->peer.socklen = lc->socklen;
    rc->peer.name = &lc->name;
    rc->peer.get = ngx_event_get_peer;
    rc->peer.log = &rc->log;
    rc->peer.log_error = NGX_ERROR_ERR;

    rv = ngx_event_connect_peer(&rc->peer);

    if (rv == NGX_ERROR || rv == NGX_DECLINED || rv == NGX_BUSY) {
        ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_ERR, "cannot connect");
        return;
    }

    c = rc->peer.connection;
    c->data = rc;
    c->log = &rc->log;
    c->read->log = c->log;
    c->write->log = c->log;

    rc->log.connection = c->number;

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, c->log, 0,
                   "sf_oauth: redis \"%V\": %s connection opened",
                   &rd->name, rc->subscriber ? "subscriber" : "command");

    /* TLS allocates from the connection's pool */
    c->pool = ngx_create_pool(1024, c->log);
    if (c->pool == NULL) {
        ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_ALERT,
                                     "ngx_create_pool() failed");
        return;
    }

    c->read->handler = ngx_http_sf_oauth_redis_connected;
    c->write->handler = ngx_http_sf_oauth_redis_connected;

    rc->reader = redisReaderCreate();
    if (rc->reader == NULL || rc->reader->fn == NULL) {
        ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_ALERT,
                                     "redisReaderCreate() failed");
        return;
    }

    if (ngx_http_sf_oauth_redis_create_array == NULL) {
        ngx_http_sf_oauth_redis_functions = *rc->reader->fn;
        ngx_http_sf_oauth_redis_create_array = rc->reader->fn->createArray;
        ngx_http_sf_oauth_redis_functions.createArray =
                                                ngx_http_sf_oauth_redis_array;
    }

    rc->reader->fn = &ngx_http_sf_oauth_redis_functions;
    rc->reader->privdata = rc;

    rc->state = NGX_HTTP_SF_OAUTH_REDIS_CONNECTING;

    ngx_add_timer(c->write, rd->timeout);

    if (rv == NGX_OK) {
        ngx_http_sf_oauth_redis_connected(c->write);
    }
}


static void
ngx_http_sf_oauth_redis_retry(ngx_event_t *ev)
{
    ngx_http_sf_oauth_redis_conn_t  *rc;

    rc = (ngx_http_sf_oauth_redis_conn_t *)
             ((u_char *) ev - offsetof(ngx_http_sf_oauth_redis_conn_t,
                                       retry));

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_http_sf_oauth_redis_connect(rc);
}


static void
ngx_http_sf_oauth_redis_connected(ngx_event_t *ev)
{
    int                              err;
    socklen_t                        len;
    ngx_connection_t                *c;
    ngx_http_sf_oauth_redis_conn_t  *rc;

    c = ev->data;
    rc = c->data;

    if (ev->timedout) {
        ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_ERR, "connect timed out");
        return;
    }

    err = 0;
    len = sizeof(int);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len) == -1) {
        err = ngx_socket_errno;
    }

    if (err) {

        /*
         * As nginx says of an upstream's connect(), with its errno, but at
         * info (as of a client's connection, NGX_ERROR_INFO), and once per
         * connection and outage: the outage itself is one error line of
         * the first worker's (ngx_http_sf_oauth_redis_fail)
         */

        if (!rc->connect_logged) {
            rc->connect_logged = 1;
            c->log_error = NGX_ERROR_INFO;
            (void) ngx_connection_error(c, err, "connect() failed");

        } else {
            ngx_log_debug0(NGX_LOG_DEBUG_EVENT, c->log, err,
                           "connect() failed");
        }

        ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_ERR, "connection refused "
                                     "or unreachable");
        return;
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

#if (NGX_SSL)

    if (rc->rd->ssl) {

        if (ngx_ssl_create_connection(rc->rd->ssl, c,
                                      NGX_SSL_BUFFER|NGX_SSL_CLIENT)
            != NGX_OK)
        {
            ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_ERR,
                                         "TLS setup failed");
            return;
        }

        if (rc->locate.host.len && !rc->locate.host_is_ip) {
            SSL_set_tlsext_host_name(c->ssl->connection,
                                     (char *) rc->locate.host.data);
        }

        rc->state = NGX_HTTP_SF_OAUTH_REDIS_HANDSHAKE;
        rc->log.action = "performing the TLS handshake with Redis";

        if (ngx_ssl_handshake(c) == NGX_AGAIN) {
            ngx_add_timer(c->write, rc->rd->timeout);
            c->ssl->handler = ngx_http_sf_oauth_redis_handshake;
            return;
        }

        ngx_http_sf_oauth_redis_handshake(c);
        return;
    }

#endif

    ngx_http_sf_oauth_redis_setup(rc);
}


#if (NGX_SSL)

static void
ngx_http_sf_oauth_redis_handshake(ngx_connection_t *c)
{
    long                             rv;
    u_char                           why[256], *p;
    X509                            *cert;
    ngx_http_sf_oauth_redis_t       *rd;
    ngx_http_sf_oauth_redis_conn_t  *rc;

    rc = c->data;
    rd = rc->rd;

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    if (!c->ssl->handshaked) {
        ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_ERR,
                                     "TLS handshake failed: check that the "
                                     "server speaks TLS on this port");
        return;
    }

    if (rd->ssl_verify) {
        rv = SSL_get_verify_result(c->ssl->connection);

        if (rv != X509_V_OK) {
            p = ngx_snprintf(why, sizeof(why) - 1,
                             "the server's TLS certificate does not verify "
                             "(%l: %s); check ca_file",
                             rv, X509_verify_cert_error_string(rv));
            *p = '\0';

            ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_ERR, (char *) why);
            return;
        }

        cert = SSL_get_peer_certificate(c->ssl->connection);

        if (cert == NULL
            || (rc->locate.host_is_ip
                ? X509_check_ip_asc(cert, (char *) rc->locate.host.data, 0)
                  != 1
                : X509_check_host(cert, (char *) rc->locate.host.data,
                                  rc->locate.host.len, 0, NULL) != 1))
        {
            if (cert) {
                X509_free(cert);
            }

            p = ngx_snprintf(why, sizeof(why) - 1,
                             "the server's TLS certificate is not for "
                             "\"%V\"", &rc->locate.host);
            *p = '\0';

            ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_ERR, (char *) why);
            return;
        }

        X509_free(cert);
    }

    ngx_http_sf_oauth_redis_setup(rc);
}

#endif


/*
 * The connection's own first commands: AUTH, SELECT, ROLE (a primary
 * that may have moved), then INFO server (the server's run_id) and PING,
 * or on the subscriber SUBSCRIBE; the connection is ready when all are
 * answered.
 */

static void
ngx_http_sf_oauth_redis_setup(ngx_http_sf_oauth_redis_conn_t *rc)
{
    u_char                      *p;
    ngx_str_t                    argv[3];
    ngx_uint_t                   n;
    ngx_connection_t            *c;
    ngx_http_sf_oauth_redis_t   *rd;

    rd = rc->rd;
    c = rc->peer.connection;

    c->read->handler = ngx_http_sf_oauth_redis_read;
    c->write->handler = ngx_http_sf_oauth_redis_write;

    rc->state = NGX_HTTP_SF_OAUTH_REDIS_HANDSHAKE;
    rc->setup_left = 0;
    rc->run_id_len = 0;
    rc->role_len = 0;
    rc->role_refused = 0;
    rc->log.action = "setting up the connection to Redis";

    if (rd->password.len) {
        ngx_str_set(&argv[0], "AUTH");
        n = 1;

        if (rd->user.len) {
            argv[n++] = rd->user;
        }

        argv[n++] = rd->password;

        if (ngx_http_sf_oauth_redis_send(rc, n, argv,
                                         ngx_http_sf_oauth_redis_setup_done,
                                         rc, NGX_HTTP_SF_OAUTH_REDIS_SETUP,
                                         "setting up the connection to Redis")
            != NGX_OK)
        {
            return;
        }
    }

    if (rd->database) {
        p = ngx_pnalloc(ngx_cycle->pool, NGX_INT_T_LEN);
        if (p == NULL) {
            return;
        }

        ngx_str_set(&argv[0], "SELECT");
        argv[1].data = p;
        argv[1].len = ngx_sprintf(p, "%i", rd->database) - p;

        if (ngx_http_sf_oauth_redis_send(rc, 2, argv,
                                         ngx_http_sf_oauth_redis_setup_done,
                                         rc, NGX_HTTP_SF_OAUTH_REDIS_SETUP,
                                         "setting up the connection to Redis")
            != NGX_OK)
        {
            return;
        }
    }

    /*
     * Whether this server is the primary, or a replica now, or still: on
     * every command connection, and on the subscriber too when the
     * primary may have moved (the resolver's, the sentinels')
     */

    if (!rc->subscriber || ngx_http_sf_oauth_redis_moves(rc)) {
        ngx_str_set(&argv[0], "ROLE");

        if (ngx_http_sf_oauth_redis_send(rc, 1, argv,
                                         ngx_http_sf_oauth_redis_role,
                                         rc, NGX_HTTP_SF_OAUTH_REDIS_SETUP,
                                         "checking that Redis is the "
                                         "primary")
            != NGX_OK)
        {
            return;
        }
    }

    if (!rc->subscriber) {
        /* which server this is: a new run_id is a new primary */
        ngx_str_set(&argv[0], "INFO");
        ngx_str_set(&argv[1], "server");

        if (ngx_http_sf_oauth_redis_send(rc, 2, argv,
                                         ngx_http_sf_oauth_redis_setup_info,
                                         rc, NGX_HTTP_SF_OAUTH_REDIS_SETUP,
                                         "setting up the connection to Redis")
            != NGX_OK)
        {
            return;
        }

        /* whether commands may run at all: NOAUTH says so here */
        ngx_str_set(&argv[0], "PING");

        if (ngx_http_sf_oauth_redis_send(rc, 1, argv,
                                         ngx_http_sf_oauth_redis_setup_done,
                                         rc, NGX_HTTP_SF_OAUTH_REDIS_SETUP,
                                         "setting up the connection to Redis")
            != NGX_OK)
        {
            return;
        }

    } else {
        ngx_str_set(&argv[0], "SUBSCRIBE");
        argv[1] = rd->channel;

        if (ngx_http_sf_oauth_redis_send(rc, 2, argv,
                                         ngx_http_sf_oauth_redis_setup_done,
                                         rc, NGX_HTTP_SF_OAUTH_REDIS_SETUP,
                                         "setting up the connection to Redis")
            != NGX_OK)
        {
            return;
        }
    }

    if (rc->setup_left == 0) {
        ngx_http_sf_oauth_redis_setup_done(NULL, rc);
    }
}


static void
ngx_http_sf_oauth_redis_setup_done(void *reply, void *data)
{
    redisReply                      *r = reply;
    ngx_http_sf_oauth_redis_conn_t  *rc = data;

    ngx_uint_t                  level;
    ngx_http_sf_oauth_redis_t  *rd;

    rd = rc->rd;

    if (rc->setup_left) {

        if (r == NULL) {
            /* the connection failed: it says why itself */
            return;
        }

        if (r->type == REDIS_REPLY_ERROR) {
            level = (rc->subscriber || ngx_worker != 0 || rc->down_logged)
                    ? NGX_LOG_DEBUG : NGX_LOG_ERR;

            ngx_log_error(level, ngx_cycle->log, 0,
                          "sf_oauth: redis \"%V\" at \"%V\" refused the "
                          "connection's setup: \"%*s\"; check its password, "
                          "user and database", &rd->name, &rd->server,
                          ngx_min(r->len, 200), r->str);
            rc->down_logged = 1;
            ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_DEBUG, "setup");
            return;
        }

    }

    ngx_http_sf_oauth_redis_setup_next(rc);
}


/* a command of the setup answered: ready when all are */

static void
ngx_http_sf_oauth_redis_setup_next(ngx_http_sf_oauth_redis_conn_t *rc)
{
    ngx_http_sf_oauth_redis_t  *rd;

    rd = rc->rd;

    if (rc->setup_left && --rc->setup_left) {
        return;
    }

    rc->state = NGX_HTTP_SF_OAUTH_REDIS_READY;

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, &rc->log, 0,
                   "sf_oauth: redis \"%V\": %s connection ready",
                   &rd->name, rc->subscriber ? "subscriber" : "command");

    /*
     * The backoff and the outage end with the first reply to a command of
     * the caller's, not here: a server that answers the handshake, then
     * breaks the protocol, is not connected to again at once, and its
     * outage is logged once.
     */

    /* the subscriber's PING, the command connection's ROLE */
    ngx_add_timer(&rc->ping, NGX_HTTP_SF_OAUTH_REDIS_PING);

    if (rc->ready) {
        rc->ready(rd, rc->subscriber, rc->data);
    }
}


/* whether the primary may move: the resolver's, or the sentinels' */

static ngx_uint_t
ngx_http_sf_oauth_redis_moves(ngx_http_sf_oauth_redis_conn_t *rc)
{
    return rc->locate.source
           && ngx_strcmp(rc->locate.source, "configuration") != 0;
}


/*
 * ROLE's reply: ["master", ...], or the server is not the primary.  A
 * primary that may move must answer it; a fixed address that refuses it
 * (an ACL user without +role) is taken, its role not known.
 */

static void
ngx_http_sf_oauth_redis_role(void *reply, void *data)
{
    redisReply                      *r = reply;
    ngx_http_sf_oauth_redis_conn_t  *rc = data;

    u_char                      why[256], *p;
    redisReply                 *role;
    ngx_http_sf_oauth_redis_t  *rd;

    rd = rc->rd;

    if (r && r->type == REDIS_REPLY_ERROR
        && !ngx_http_sf_oauth_redis_moves(rc))
    {
        ngx_log_debug4(NGX_LOG_DEBUG_EVENT, &rc->log, 0,
                       "sf_oauth: redis \"%V\": \"%V\" refused ROLE: "
                       "\"%*s\", its role not known",
                       &rd->name, &rc->locate.name, ngx_min(r->len, 200),
                       r->str);
        rc->role_refused = 1;
        ngx_http_sf_oauth_redis_setup_next(rc);
        return;
    }

    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        /* the connection failed, or the setup's error, said as such */
        ngx_http_sf_oauth_redis_setup_done(reply, data);
        return;
    }

    role = (r->type == REDIS_REPLY_ARRAY && r->elements > 0
            && r->element[0]->type == REDIS_REPLY_STRING)
           ? r->element[0] : NULL;

    if (role && role->len <= sizeof(rc->role)) {
        rc->role_len = role->len;
        ngx_memcpy(rc->role, role->str, role->len);
    }

    if (role && role->len == sizeof("master") - 1
        && ngx_strncmp(role->str, "master", sizeof("master") - 1) == 0)
    {
        ngx_http_sf_oauth_redis_setup_done(reply, data);
        return;
    }

    p = ngx_snprintf(why, sizeof(why) - 1,
                     "\"%V\" (from the %s) is not the primary: ROLE says "
                     "\"%*s\"; %s", &rc->locate.name, rc->locate.source,
                     role ? ngx_min(role->len, 32) : 7,
                     role ? role->str : "unknown",
                     ngx_http_sf_oauth_redis_next(rd));
    *p = '\0';

    ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_WARN, (char *) why);
}


/* -READONLY: a replica now, the primary elsewhere */

static ngx_uint_t
ngx_http_sf_oauth_redis_readonly(redisReply *r)
{
    return r->type == REDIS_REPLY_ERROR
           && r->len >= sizeof("READONLY") - 1
           && ngx_strncmp(r->str, "READONLY", sizeof("READONLY") - 1) == 0;
}


/* what a connection that found a replica does next, for the log */

static const char *
ngx_http_sf_oauth_redis_next(ngx_http_sf_oauth_redis_t *rd)
{
    return rd->sentinels ? "asking the sentinels where the primary is"
           : rd->primary.is_ip ? "its address is fixed: the fleet waits "
                                 "for it to be the primary again"
           : rd->primary.resolved ? "its address is fixed (see "
                                    "\"resolver\")"
           : "resolving the name again";
}


/*
 * A command got -READONLY (said: "READONLY"), or the periodic ROLE named
 * another role: the connection fails (its commands fail, as on a lost
 * connection), and so does the other one to the same server; both ask
 * where the primary is again.
 */

static void
ngx_http_sf_oauth_redis_replica(ngx_http_sf_oauth_redis_conn_t *rc,
    ngx_str_t *said)
{
    u_char                           why[256], *p;
    ngx_http_sf_oauth_redis_t       *rd;
    ngx_http_sf_oauth_redis_conn_t  *other;

    rd = rc->rd;
    other = rc->subscriber ? rd->cmd : rd->sub;

    p = ngx_snprintf(why, sizeof(why) - 1,
                     "\"%V\" answered %V: it is a replica now; %s",
                     &rc->locate.name, said, ngx_http_sf_oauth_redis_next(rd));
    *p = '\0';

    if (other && other->state != NGX_HTTP_SF_OAUTH_REDIS_CLOSED
        && other->state != NGX_HTTP_SF_OAUTH_REDIS_LOCATING
        && other->locate.name.len == rc->locate.name.len
        && ngx_strncmp(other->locate.name.data, rc->locate.name.data,
                       rc->locate.name.len) == 0)
    {
        ngx_http_sf_oauth_redis_fail(other, NGX_LOG_DEBUG, (char *) why);
    }

    /*
     * Said by the worker whose command met it, whichever it is: its
     * command failed for it (once an outage)
     */

    if (!rc->down_logged) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sf_oauth: redis \"%V\" at \"%V\": %s", &rd->name,
                      &rd->server, why);
        rc->down_logged = 1;
    }

    ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_DEBUG, (char *) why);
}


/*
 * The sentinels moved the master to "addr": a connection to another
 * address is closed, its commands fail, and it asks where the primary is
 */

static void
ngx_http_sf_oauth_redis_moved(ngx_http_sf_oauth_redis_t *rd, ngx_str_t *addr)
{
    ngx_uint_t                       i, logged;
    ngx_http_sf_oauth_redis_conn_t  *rc;

    logged = 0;

    for (i = 0; i < 2; i++) {
        rc = i ? rd->sub : rd->cmd;

        if (rc == NULL || rc->state == NGX_HTTP_SF_OAUTH_REDIS_CLOSED
            || rc->state == NGX_HTTP_SF_OAUTH_REDIS_LOCATING
            || (rc->locate.name.len == addr->len
                && ngx_strncmp(rc->locate.name.data, addr->data, addr->len)
                   == 0))
        {
            continue;
        }

        if (!logged && ngx_worker == 0) {
            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "sf_oauth: redis \"%V\": the sentinels switched "
                          "the master from \"%V\" to \"%V\": connecting "
                          "to it", &rd->name, &rc->locate.name, addr);
        }

        logged = 1;

        ngx_http_sf_oauth_redis_close(rc);

        /* at once: the old primary is no outage */
        rc->backoff = NGX_HTTP_SF_OAUTH_REDIS_RETRY_MIN;

        if (!rc->retry.timer_set && !ngx_exiting && !ngx_terminate
            && !ngx_quit)
        {
            ngx_add_timer(&rc->retry, 1);
        }
    }
}


/*
 * The reply to INFO server: the line "run_id:" and 40 hex digits.  A
 * refusal (an ACL user without INFO) leaves the run_id unknown, and is no
 * failure: the PING after it, answered last, ends the setup.
 */

static void
ngx_http_sf_oauth_redis_setup_info(void *reply, void *data)
{
    redisReply                      *r = reply;
    ngx_http_sf_oauth_redis_conn_t  *rc = data;

    u_char  *p, *last;
    size_t   n;

    if (r == NULL) {
        /* the connection failed: it says why itself */
        return;
    }

    rc->setup_left--;

    if (r->type != REDIS_REPLY_STRING) {
        ngx_log_debug1(NGX_LOG_DEBUG_EVENT, &rc->log, 0,
                       "sf_oauth: redis \"%V\": no answer to INFO server: "
                       "the server's run_id is not known", &rc->rd->name);
        return;
    }

    p = (u_char *) r->str;
    last = p + r->len;

    p = ngx_strlcasestrn(p, last, (u_char *) "run_id:", 7 - 1);
    if (p == NULL) {
        return;
    }

    p += 7;

    for (n = 0; p + n < last && n < NGX_HTTP_SF_OAUTH_RUN_ID_LEN; n++) {
        if (!isxdigit(p[n])) {
            break;
        }
    }

    if (n != NGX_HTTP_SF_OAUTH_RUN_ID_LEN) {
        return;
    }

    ngx_memcpy(rc->run_id, p, n);
    rc->run_id_len = n;

    ngx_log_debug3(NGX_LOG_DEBUG_EVENT, &rc->log, 0,
                   "sf_oauth: redis \"%V\": the server's run_id is %*s",
                   &rc->rd->name, (size_t) 8, rc->run_id);
}


static ngx_int_t
ngx_http_sf_oauth_redis_send(ngx_http_sf_oauth_redis_conn_t *rc,
    ngx_uint_t argc, ngx_str_t *argv, ngx_http_sf_oauth_reply_pt handler,
    void *data, ngx_uint_t setup, char *action)
{
    int                             n;
    char                           *cmd;
    u_char                         *p;
    size_t                          size;
    ngx_uint_t                      i;
    const char                     *args[16];
    size_t                          lens[16];
    ngx_http_sf_oauth_redis_cmd_t  *q;

    if (argc > 16) {
        return NGX_ERROR;
    }

    for (i = 0; i < argc; i++) {
        args[i] = (const char *) argv[i].data;
        lens[i] = argv[i].len;
    }

    n = redisFormatCommandArgv(&cmd, (int) argc, args, lens);
    if (n < 0) {
        return NGX_ERROR;
    }

    if (rc->out_len + n > rc->out_size) {
        size = ngx_max(rc->out_size * 2, rc->out_len + n + 1024);

        p = ngx_alloc(size, ngx_cycle->log);
        if (p == NULL) {
            redisFreeCommand(cmd);
            return NGX_ERROR;
        }

        if (rc->out) {
            ngx_memcpy(p, rc->out, rc->out_len);
            ngx_explicit_memzero(rc->out, rc->out_size);
            ngx_free(rc->out);
        }

        rc->out = p;
        rc->out_size = size;
    }

    ngx_memcpy(rc->out + rc->out_len, cmd, n);
    rc->out_len += n;

    /* a command holds a password or an encrypted record: wipe the copy */
    ngx_explicit_memzero(cmd, n);
    redisFreeCommand(cmd);

    q = ngx_alloc(sizeof(ngx_http_sf_oauth_redis_cmd_t), ngx_cycle->log);
    if (q == NULL) {
        return NGX_ERROR;
    }

    q->handler = handler;
    q->data = data;
    q->setup = setup;
    q->deadline = ngx_current_msec + rc->rd->timeout;
    q->action = action;

    if (setup == NGX_HTTP_SF_OAUTH_REDIS_SETUP) {
        rc->setup_left++;
    }

    ngx_queue_insert_tail(&rc->pending, &q->queue);

    if (ngx_http_sf_oauth_redis_flush(rc) != NGX_OK) {
        ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_ERR, "write failed");
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_sf_oauth_redis_flush(ngx_http_sf_oauth_redis_conn_t *rc)
{
    ssize_t            n;
    ngx_connection_t  *c;

    c = rc->peer.connection;

    while (rc->out_len) {
        n = c->send(c, rc->out, rc->out_len);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n <= 0) {
            return NGX_ERROR;
        }

        ngx_memmove(rc->out, rc->out + n, rc->out_len - n);
        rc->out_len -= n;
    }

    if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    /*
     * a reply is due: within the timeout of the oldest command not yet
     * answered; a new command must not push that deadline back, or a hung
     * server that keeps being sent commands (the periodic read every
     * second) is never noticed.
     */

    if (!c->read->timer_set) {
        ngx_http_sf_oauth_redis_deadline(rc);
    }

    return NGX_OK;
}


static void
ngx_http_sf_oauth_redis_write(ngx_event_t *ev)
{
    ngx_connection_t                *c;
    ngx_http_sf_oauth_redis_conn_t  *rc;

    c = ev->data;
    rc = c->data;

    if (ngx_http_sf_oauth_redis_flush(rc) != NGX_OK) {
        ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_ERR, "write failed");
    }
}


/* the subscriber's PING: a server gone silent is noticed by its deadline */

static void
ngx_http_sf_oauth_redis_ping(ngx_event_t *ev)
{
    ngx_str_t                        argv[1];
    ngx_http_sf_oauth_redis_conn_t  *rc;

    rc = (ngx_http_sf_oauth_redis_conn_t *)
             ((u_char *) ev - offsetof(ngx_http_sf_oauth_redis_conn_t, ping));

    if (rc->state != NGX_HTTP_SF_OAUTH_REDIS_READY
        || ngx_exiting || ngx_terminate || ngx_quit)
    {
        return;
    }

    if (rc->subscriber) {

        /* one at a time: the read timer runs for the one not answered yet */

        if (ngx_queue_empty(&rc->pending)) {
            ngx_str_set(&argv[0], "PING");

            (void) ngx_http_sf_oauth_redis_send(rc, 1, argv,
                                                ngx_http_sf_oauth_redis_pong,
                                                rc,
                                                NGX_HTTP_SF_OAUTH_REDIS_OWN,
                                                "listening on the fleet's "
                                                "channel in Redis");
        }

    } else if (!rc->role_asked && !rc->role_refused) {

        /* whether the server is still the primary, one ROLE at a time */

        ngx_str_set(&argv[0], "ROLE");
        rc->role_asked = 1;

        (void) ngx_http_sf_oauth_redis_send(rc, 1, argv,
                                            ngx_http_sf_oauth_redis_role_again,
                                            rc, NGX_HTTP_SF_OAUTH_REDIS_OWN,
                                            "checking that Redis is the "
                                            "primary");
    }

    if (rc->state == NGX_HTTP_SF_OAUTH_REDIS_READY) {
        ngx_add_timer(ev, NGX_HTTP_SF_OAUTH_REDIS_PING);
    }
}


static void
ngx_http_sf_oauth_redis_pong(void *reply, void *data)
{
}


/* the periodic ROLE's reply: a primary demoted since is left */

static void
ngx_http_sf_oauth_redis_role_again(void *reply, void *data)
{
    redisReply                      *r = reply;
    ngx_http_sf_oauth_redis_conn_t  *rc = data;

    u_char       buf[64];
    ngx_str_t    said;
    redisReply  *role;

    rc->role_asked = 0;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements == 0
        || r->element[0]->type != REDIS_REPLY_STRING)
    {
        /* the connection failed, or ROLE is refused now: nothing known */
        return;
    }

    role = r->element[0];

    if (role->len <= sizeof(rc->role)) {
        rc->role_len = role->len;
        ngx_memcpy(rc->role, role->str, role->len);
    }

    if (role->len == sizeof("master") - 1
        && ngx_strncmp(role->str, "master", sizeof("master") - 1) == 0)
    {
        return;
    }

    said.data = buf;
    said.len = ngx_snprintf(buf, sizeof(buf), "ROLE \"%*s\"",
                            ngx_min(role->len, 32), role->str)
               - buf;

    ngx_http_sf_oauth_redis_replica(rc, &said);
}


/* a reply to a command of the caller's: the connection works */

static void
ngx_http_sf_oauth_redis_proven(ngx_http_sf_oauth_redis_conn_t *rc)
{
    rc->backoff = NGX_HTTP_SF_OAUTH_REDIS_RETRY_MIN;
    rc->connect_logged = 0;

    if (!rc->down_logged) {
        return;
    }

    rc->down_logged = 0;

    if (!rc->subscriber) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "sf_oauth: redis \"%V\" at \"%V\" is reachable again",
                      &rc->rd->name, &rc->rd->server);
    }
}


static void
ngx_http_sf_oauth_redis_read(ngx_event_t *ev)
{
    void                            *reply;
    u_char                           buf[16384], why[128], *p;
    ssize_t                          n;
    ngx_str_t                        said;
    ngx_queue_t                     *q;
    redisReply                      *r;
    ngx_connection_t                *c;
    ngx_http_sf_oauth_redis_cmd_t   *cmd;
    ngx_http_sf_oauth_redis_conn_t  *rc;

    c = ev->data;
    rc = c->data;

    if (ev->timedout) {
        ngx_http_sf_oauth_redis_broken(rc, "a reply timed out");
        return;
    }

    for ( ;; ) {
        n = c->recv(c, buf, sizeof(buf));

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_ERR,
                                         "the connection was closed");
            return;
        }

        rc->reply_bytes += n;

        if (redisReaderFeed(rc->reader, (char *) buf, n) != REDIS_OK) {
            ngx_http_sf_oauth_redis_broken(rc, "the reply does not parse");
            return;
        }

        for ( ;; ) {
            reply = NULL;

            if (redisReaderGetReply(rc->reader, &reply) != REDIS_OK) {

                if (rc->too_large) {
                    goto too_large;
                }

                ngx_http_sf_oauth_redis_broken(rc, "the reply does not parse");
                return;
            }

            if (reply == NULL) {
                break;
            }

            /* what the reader holds still is the next replies' */
            rc->reply_bytes = rc->reader->len - rc->reader->pos;

            r = reply;

            if (rc->subscriber && ngx_http_sf_oauth_redis_is_message(r)) {

                /* a message of the channel, on the subscriber */

                if (rc->state == NGX_HTTP_SF_OAUTH_REDIS_READY) {
                    rc->message(r, rc->data);
                }

                freeReplyObject(r);
                continue;
            }

            if (ngx_queue_empty(&rc->pending)) {
                /* a reply to no command */
                freeReplyObject(r);
                continue;
            }

            if (ngx_http_sf_oauth_redis_readonly(r)) {
                freeReplyObject(r);
                ngx_str_set(&said, "READONLY");
                ngx_http_sf_oauth_redis_replica(rc, &said);
                return;
            }

            q = ngx_queue_head(&rc->pending);
            ngx_queue_remove(q);
            cmd = ngx_queue_data(q, ngx_http_sf_oauth_redis_cmd_t, queue);

            if (cmd->setup != NGX_HTTP_SF_OAUTH_REDIS_SETUP) {
                ngx_http_sf_oauth_redis_proven(rc);
            }

            if (cmd->setup == NGX_HTTP_SF_OAUTH_REDIS_CALLER
                && r->type != REDIS_REPLY_ERROR)
            {
                rc->ok_at = ngx_current_msec;
                rc->ok_seen = 1;
            }

            cmd->handler(r, cmd->data);

            freeReplyObject(r);
            ngx_free(cmd);

            if (rc->peer.connection == NULL) {
                /* the handler closed the connection */
                return;
            }
        }

        if (ngx_http_sf_oauth_redis_oversized(rc)) {
            goto too_large;
        }
    }

    ngx_http_sf_oauth_redis_deadline(rc);

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_ERR, "read failed");
    }

    return;

too_large:

    p = ngx_snprintf(why, sizeof(why) - 1,
                     "the server sent a reply larger than %d bytes, more "
                     "than any reply to the module can be",
                     NGX_HTTP_SF_OAUTH_REDIS_REPLY_MAX);
    *p = '\0';

    ngx_http_sf_oauth_redis_broken(rc, (char *) why);
}


/* a message of the channel: ["message", channel, text] */

static ngx_uint_t
ngx_http_sf_oauth_redis_is_message(redisReply *r)
{
    redisReply  *kind;

    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3) {
        return 0;
    }

    kind = r->element[0];

    return kind->type == REDIS_REPLY_STRING
           && kind->len == sizeof("message") - 1
           && ngx_strncmp(kind->str, "message", sizeof("message") - 1) == 0;
}


/*
 * Whether the reply being read is larger than a reply may be: by the
 * bytes of it read so far, which hiredis holds in its buffer or has made
 * elements of, or by the length that a bulk string announces, which
 * hiredis waits for whole.
 */

static ngx_uint_t
ngx_http_sf_oauth_redis_oversized(ngx_http_sf_oauth_redis_conn_t *rc)
{
    size_t        len;
    u_char       *p, *last;
    redisReader  *reader;

    reader = rc->reader;

    if (rc->reply_bytes > NGX_HTTP_SF_OAUTH_REDIS_REPLY_MAX) {
        return 1;
    }

    if (reader->ridx < 0
        || ngx_http_sf_oauth_redis_task(reader)->type != REDIS_REPLY_STRING)
    {
        return 0;
    }

    /* the reader stands at the bulk string's length: its digits so far */

    p = (u_char *) reader->buf + reader->pos;
    last = (u_char *) reader->buf + reader->len;

    for (len = 0; p < last && *p >= '0' && *p <= '9'; p++) {
        len = len * 10 + (*p - '0');

        if (len > NGX_HTTP_SF_OAUTH_REDIS_REPLY_MAX) {
            return 1;
        }
    }

    return 0;
}


/*
 * hiredis's createArray, for at most as many elements as the largest
 * reply holds ("+\r\n" each at least): hiredis allocates them as the
 * array is announced.
 */

static void *
ngx_http_sf_oauth_redis_array(const redisReadTask *task,
    ngx_http_sf_oauth_redis_count_t elements)
{
    ngx_http_sf_oauth_redis_conn_t  *rc;

    if ((size_t) elements > NGX_HTTP_SF_OAUTH_REDIS_REPLY_MAX / 3) {
        rc = task->privdata;
        rc->too_large = 1;
        return NULL;
    }

    return ngx_http_sf_oauth_redis_create_array(task, elements);
}


/*
 * The read timer: the deadline of the oldest command not answered, from
 * when it was sent, not from the last bytes read, which a server could
 * send one at a time.  The log's action is that command's too.
 */

static void
ngx_http_sf_oauth_redis_deadline(ngx_http_sf_oauth_redis_conn_t *rc)
{
    ngx_msec_int_t                  left;
    ngx_connection_t               *c;
    ngx_http_sf_oauth_redis_cmd_t  *cmd;

    c = rc->peer.connection;

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (ngx_queue_empty(&rc->pending)) {
        if (rc->state == NGX_HTTP_SF_OAUTH_REDIS_READY) {
            rc->log.action = rc->subscriber
                             ? "listening on the fleet's channel in Redis"
                             : "waiting for the fleet's next command to "
                               "Redis";
        }

        return;
    }

    cmd = ngx_queue_data(ngx_queue_head(&rc->pending),
                         ngx_http_sf_oauth_redis_cmd_t, queue);

    rc->log.action = cmd->action;

    left = (ngx_msec_int_t) (cmd->deadline - ngx_current_msec);

    ngx_add_timer(c->read, left > 0 ? (ngx_msec_t) left : 1);
}


/*
 * The connection failed: closed, its commands failed, and a new one in a
 * while.  The first failure of an outage is logged at "level"; the
 * following ones at debug.
 */

static void
ngx_http_sf_oauth_redis_fail(ngx_http_sf_oauth_redis_conn_t *rc,
    ngx_uint_t level, const char *why)
{
    ngx_http_sf_oauth_redis_t  *rd;

    rd = rc->rd;

    /* the first worker speaks for the node: one line per outage */

    if (!rc->down_logged && level != NGX_LOG_DEBUG && !rc->subscriber
        && ngx_worker == 0)
    {
        ngx_log_error(level, ngx_cycle->log, 0,
                      "sf_oauth: redis \"%V\" at \"%V\": %s; the module "
                      "retries in the background, and requests with a "
                      "valid token are not affected", &rd->name,
                      &rd->server, why);
        rc->down_logged = 1;

    } else {
        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: redis \"%V\" at \"%V\": %s",
                       &rd->name, &rd->server, why);
    }

    ngx_http_sf_oauth_redis_close(rc);

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    if (!rc->retry.timer_set) {
        ngx_log_debug3(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                       "sf_oauth: redis \"%V\": %s connection opened "
                       "again in %M ms", &rd->name,
                       rc->subscriber ? "subscriber" : "command",
                       rc->backoff);

        ngx_add_timer(&rc->retry, rc->backoff);
    }

    rc->backoff = ngx_min(rc->backoff * 2, NGX_HTTP_SF_OAUTH_REDIS_RETRY_MAX);
}


/*
 * The server broke the protocol, or a deadline, on a connection that had
 * been working: the subscriber says so too, as the command connection
 * does not see it.  Then as any failure.
 */

static void
ngx_http_sf_oauth_redis_broken(ngx_http_sf_oauth_redis_conn_t *rc,
    const char *why)
{
    if (rc->subscriber && !rc->down_logged && ngx_worker == 0) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sf_oauth: redis \"%V\" at \"%V\": the subscriber "
                      "connection: %s; it is opened again, and the periodic "
                      "read makes up for the messages missed",
                      &rc->rd->name, &rc->rd->server, why);
        rc->down_logged = 1;
    }

    ngx_http_sf_oauth_redis_fail(rc, NGX_LOG_ERR, why);
}


static void
ngx_http_sf_oauth_redis_close(ngx_http_sf_oauth_redis_conn_t *rc)
{
    ngx_queue_t                    *q;
    ngx_connection_t               *c;
    ngx_http_sf_oauth_redis_cmd_t  *cmd;

    ngx_http_sf_oauth_primary_cancel(&rc->locate);

    c = rc->peer.connection;
    rc->peer.connection = NULL;
    rc->state = NGX_HTTP_SF_OAUTH_REDIS_CLOSED;
    rc->reply_bytes = 0;
    rc->too_large = 0;

    if (rc->ping.timer_set) {
        ngx_del_timer(&rc->ping);
    }

    if (c) {
#if (NGX_SSL)
        if (c->ssl) {
            c->ssl->no_wait_shutdown = 1;
            c->ssl->no_send_shutdown = 1;
            (void) ngx_ssl_shutdown(c);
        }
#endif

        c->read->handler = ngx_http_sf_oauth_redis_dummy;
        c->write->handler = ngx_http_sf_oauth_redis_dummy;

        if (c->pool) {
            ngx_destroy_pool(c->pool);
            c->pool = NULL;
        }

        ngx_close_connection(c);
    }

    if (rc->reader) {
        redisReaderFree(rc->reader);
        rc->reader = NULL;
    }

    if (rc->out) {
        ngx_explicit_memzero(rc->out, rc->out_size);
        ngx_free(rc->out);
        rc->out = NULL;
        rc->out_len = 0;
        rc->out_size = 0;
    }

    /* the commands in flight fail: each caller falls back */

    while (!ngx_queue_empty(&rc->pending)) {
        q = ngx_queue_head(&rc->pending);
        ngx_queue_remove(q);
        cmd = ngx_queue_data(q, ngx_http_sf_oauth_redis_cmd_t, queue);

        cmd->handler(NULL, cmd->data);

        ngx_free(cmd);
    }
}


static void
ngx_http_sf_oauth_redis_dummy(ngx_event_t *ev)
{
}


/* what nginx adds to a line of the connection's: its action */

static u_char *
ngx_http_sf_oauth_redis_log_error(ngx_log_t *log, u_char *buf, size_t len)
{
    if (log->action == NULL) {
        return buf;
    }

    return ngx_snprintf(buf, len, " while %s", log->action);
}
