
/*
 * The token client: refresh-token grants on libcurl's multi-socket API,
 * driven by the worker's nginx event loop.
 *
 * Each curl socket is wrapped in an nginx connection taken with
 * ngx_get_connection(); the connection is kept in curl's per-socket
 * pointer (curl_multi_assign), never in a table keyed by fd, because curl
 * may close a socket and open another with the same number within one
 * call.  curl owns the descriptors: they leave epoll through ngx_del_conn()
 * and the connection goes back with ngx_free_connection(), never
 * ngx_close_connection().  Events are level-triggered, as curl expects.
 * One nginx timer carries curl's timeout.  DNS runs in curl's resolver
 * thread, so nothing here blocks the worker.
 *
 * Each connection has a log of its own, a copy of the cycle's, whose
 * action names what the transfer on it is for ("requesting a token from
 * the token endpoint"), as nginx's upstream does: what nginx logs of the
 * socket says so, and the cycle's log is not changed.
 *
 * The client knows none of its callers: a transfer is what a
 * ngx_http_sf_oauth_call_t asks, and its answer goes to the completion
 * callback that the call names, as njs's fetch client does.
 */


#include "ngx_http_sf_oauth.h"

#include <curl/curl.h>


struct ngx_http_sf_oauth_transfer_s {
    CURL                        *easy;
    ngx_pool_t                  *pool;
    ngx_queue_t                  queue;
    struct curl_slist           *headers;
    char                        *post;
    size_t                       post_len;
    u_char                      *body;
    size_t                       body_len;
    ngx_http_sf_oauth_done_pt    done;
    void                        *data;
    /* for the log: what the transfer is for, and when it started */
    char                        *action;
    ngx_msec_t                   start;
    unsigned                     too_large:1;
    char                         errbuf[CURL_ERROR_SIZE];
};


static int ngx_http_sf_oauth_socket(CURL *easy, curl_socket_t s, int what,
    void *userp, void *socketp);
static int ngx_http_sf_oauth_timer(CURLM *multi, long timeout_ms,
    void *userp);
static ngx_connection_t *ngx_http_sf_oauth_client_connection(
    curl_socket_t s);
static void ngx_http_sf_oauth_client_close(ngx_connection_t *c);
static u_char *ngx_http_sf_oauth_client_log_error(ngx_log_t *log, u_char *buf,
    size_t len);
static void ngx_http_sf_oauth_event_handler(ngx_event_t *ev);
static void ngx_http_sf_oauth_timer_handler(ngx_event_t *ev);
static void ngx_http_sf_oauth_check_done(void);
static void ngx_http_sf_oauth_abandon(const char *when);
static void ngx_http_sf_oauth_finish(ngx_http_sf_oauth_transfer_t *tr,
    CURLcode code);
static void ngx_http_sf_oauth_transfer_free(ngx_http_sf_oauth_transfer_t *tr);
static size_t ngx_http_sf_oauth_write(char *ptr, size_t size, size_t nmemb,
    void *userdata);
static ngx_int_t ngx_http_sf_oauth_form(ngx_http_sf_oauth_transfer_t *tr,
    ngx_http_sf_oauth_call_t *call);
static ngx_int_t ngx_http_sf_oauth_bearer(ngx_http_sf_oauth_transfer_t *tr,
    ngx_str_t *token);


static CURLM             *ngx_http_sf_oauth_multi;
static ngx_uint_t         ngx_http_sf_oauth_in_flight;
static ngx_event_t        ngx_http_sf_oauth_timer_event;
static ngx_queue_t        ngx_http_sf_oauth_transfers;


ngx_int_t
ngx_http_sf_oauth_client_init(ngx_cycle_t *cycle)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "sf_oauth: curl_global_init() failed");
        return NGX_ERROR;
    }

    ngx_http_sf_oauth_multi = curl_multi_init();
    if (ngx_http_sf_oauth_multi == NULL) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "sf_oauth: curl_multi_init() failed");
        return NGX_ERROR;
    }

    curl_multi_setopt(ngx_http_sf_oauth_multi, CURLMOPT_SOCKETFUNCTION,
                      ngx_http_sf_oauth_socket);
    curl_multi_setopt(ngx_http_sf_oauth_multi, CURLMOPT_TIMERFUNCTION,
                      ngx_http_sf_oauth_timer);

    ngx_http_sf_oauth_timer_init(&ngx_http_sf_oauth_timer_event,
                                 ngx_http_sf_oauth_timer_handler, cycle->log);

    ngx_queue_init(&ngx_http_sf_oauth_transfers);

    return NGX_OK;
}


void
ngx_http_sf_oauth_client_exit(ngx_cycle_t *cycle)
{
    ngx_uint_t         i;
    ngx_connection_t  *c;

    if (ngx_http_sf_oauth_multi == NULL) {
        return;
    }

    ngx_http_sf_oauth_abandon("on exit");

    curl_multi_cleanup(ngx_http_sf_oauth_multi);
    ngx_http_sf_oauth_multi = NULL;

    if (ngx_http_sf_oauth_timer_event.timer_set) {
        ngx_del_timer(&ngx_http_sf_oauth_timer_event);
    }

    /* connections curl did not report closed, so nginx sees no open socket */

    c = cycle->connections;

    for (i = 0; i < cycle->connection_n; i++) {
        if (c[i].fd != (ngx_socket_t) -1
            && c[i].read
            && c[i].read->handler == ngx_http_sf_oauth_event_handler)
        {
            ngx_http_sf_oauth_client_close(&c[i]);
        }
    }

    curl_global_cleanup();
}


/*
 * Drops the transfers in flight: each caller hears of it through its
 * callback, with "abandoned" set.  A token request's caller gives its
 * lease back there, so that another worker takes over at once; a refresh
 * token that Salesforce rotates in such a request is lost, so this
 * happens only on exit: a graceful shutdown waits for the requests in
 * flight, so only a fast one (SIGTERM, SIGINT) has any.
 */

static void
ngx_http_sf_oauth_abandon(const char *when)
{
    ngx_queue_t                   *q;
    ngx_http_sf_oauth_answer_t     answer;
    ngx_http_sf_oauth_transfer_t  *tr;

    while (!ngx_queue_empty(&ngx_http_sf_oauth_transfers)) {
        q = ngx_queue_head(&ngx_http_sf_oauth_transfers);
        tr = ngx_queue_data(q, ngx_http_sf_oauth_transfer_t, queue);

        ngx_memzero(&answer, sizeof(ngx_http_sf_oauth_answer_t));
        answer.error = when;
        answer.abandoned = 1;

        ngx_log_debug2(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                       "sf_oauth: client: request abandoned %s (%s)",
                       when, tr->action);

        tr->done(&answer, tr->data);

        ngx_http_sf_oauth_transfer_free(tr);
    }
}


/*
 * Starts a transfer: a POST of call->form, or a GET without one.  Its
 * answer goes to call->done; until then the transfer is in flight.
 */

ngx_http_sf_oauth_transfer_t *
ngx_http_sf_oauth_client_start(ngx_http_sf_oauth_call_t *call)
{
    CURLMcode                      mc;
    ngx_pool_t                    *pool;
    ngx_http_sf_oauth_transfer_t  *tr;

    pool = ngx_create_pool(4096, ngx_cycle->log);
    if (pool == NULL) {
        return NULL;
    }

    tr = ngx_pcalloc(pool, sizeof(ngx_http_sf_oauth_transfer_t));
    if (tr == NULL) {
        ngx_destroy_pool(pool);
        return NULL;
    }

    tr->pool = pool;
    tr->done = call->done;
    tr->data = call->data;
    tr->action = call->action ? call->action : "making an HTTP request";
    tr->start = ngx_current_msec;

    tr->body = ngx_pnalloc(pool, NGX_HTTP_SF_OAUTH_BODY_MAX);
    tr->easy = curl_easy_init();
    tr->headers = curl_slist_append(NULL, "Accept: application/json");

    if (tr->body == NULL || tr->easy == NULL || tr->headers == NULL) {
        goto failed;
    }

    if (call->form) {
        if (ngx_http_sf_oauth_form(tr, call) != NGX_OK) {
            goto failed;
        }

        /* the post body is only pointed to */

        curl_easy_setopt(tr->easy, CURLOPT_POST, 1L);
        curl_easy_setopt(tr->easy, CURLOPT_POSTFIELDS, tr->post);
        curl_easy_setopt(tr->easy, CURLOPT_POSTFIELDSIZE,
                         (long) tr->post_len);

    } else {
        curl_easy_setopt(tr->easy, CURLOPT_HTTPGET, 1L);
    }

    if (call->bearer
        && ngx_http_sf_oauth_bearer(tr, call->bearer) != NGX_OK)
    {
        goto failed;
    }

    /* curl copies the URL */

    if (curl_easy_setopt(tr->easy, CURLOPT_URL, call->url->data)
        != CURLE_OK
        || curl_easy_setopt(tr->easy, CURLOPT_PROTOCOLS_STR, "http,https")
           != CURLE_OK)
    {
        goto failed;
    }

    curl_easy_setopt(tr->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(tr->easy, CURLOPT_PRIVATE, tr);
    curl_easy_setopt(tr->easy, CURLOPT_ERRORBUFFER, tr->errbuf);
    curl_easy_setopt(tr->easy, CURLOPT_HTTPHEADER, tr->headers);
    curl_easy_setopt(tr->easy, CURLOPT_WRITEFUNCTION, ngx_http_sf_oauth_write);
    curl_easy_setopt(tr->easy, CURLOPT_WRITEDATA, tr);
    curl_easy_setopt(tr->easy, CURLOPT_TIMEOUT_MS, (long) call->timeout);
    curl_easy_setopt(tr->easy, CURLOPT_CONNECTTIMEOUT_MS,
                     (long) call->timeout);
    curl_easy_setopt(tr->easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(tr->easy, CURLOPT_SSL_VERIFYPEER,
                     call->ssl_verify ? 1L : 0L);
    curl_easy_setopt(tr->easy, CURLOPT_SSL_VERIFYHOST,
                     call->ssl_verify ? 2L : 0L);

    if (call->ca_file && call->ca_file->len) {
        curl_easy_setopt(tr->easy, CURLOPT_CAINFO, call->ca_file->data);
    }

    curl_easy_setopt(tr->easy, CURLOPT_USERAGENT,
                     "ngx_http_sf_oauth_module");

    mc = curl_multi_add_handle(ngx_http_sf_oauth_multi, tr->easy);
    if (mc != CURLM_OK) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "sf_oauth: curl_multi_add_handle() failed: %s",
                      curl_multi_strerror(mc));
        goto failed;
    }

    ngx_queue_insert_tail(&ngx_http_sf_oauth_transfers, &tr->queue);
    ngx_http_sf_oauth_in_flight++;

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                   "sf_oauth: client: request started (%s), %ui in flight",
                   tr->action, ngx_http_sf_oauth_in_flight);

    return tr;

failed:

    ngx_http_sf_oauth_transfer_free(tr);

    return NULL;
}


/* the form, percent-encoded: "name=value&name=value" */

static ngx_int_t
ngx_http_sf_oauth_form(ngx_http_sf_oauth_transfer_t *tr,
    ngx_http_sf_oauth_call_t *call)
{
    char        *esc;
    u_char      *p;
    size_t       len, n;
    ngx_uint_t   i;

    len = 0;

    /* every value may triple when percent-encoded */
    for (i = 0; i < call->nform; i++) {
        len += sizeof("&=") - 1 + call->form[i].key.len
               + 3 * call->form[i].value.len;
    }

    p = ngx_pnalloc(tr->pool, len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    tr->post = (char *) p;

    for (i = 0; i < call->nform; i++) {

        esc = curl_easy_escape(NULL, (char *) call->form[i].value.data,
                               (int) call->form[i].value.len);
        if (esc == NULL) {
            tr->post_len = p - (u_char *) tr->post;
            return NGX_ERROR;
        }

        n = ngx_strlen(esc);

        if (i) {
            *p++ = '&';
        }

        p = ngx_cpymem(p, call->form[i].key.data, call->form[i].key.len);
        *p++ = '=';
        p = ngx_cpymem(p, esc, n);

        ngx_explicit_memzero(esc, n);
        curl_free(esc);
    }

    tr->post_len = p - (u_char *) tr->post;

    return NGX_OK;
}


/* an Authorization header; wiped with the others at the end */

static ngx_int_t
ngx_http_sf_oauth_bearer(ngx_http_sf_oauth_transfer_t *tr, ngx_str_t *token)
{
    u_char  *p, *last;

    p = ngx_pnalloc(tr->pool, sizeof("Authorization: Bearer ") + token->len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    last = ngx_sprintf(p, "Authorization: Bearer %V", token);
    *last = '\0';

    /* curl copies the line: the copy goes into the list */

    if (curl_slist_append(tr->headers, (char *) p) == NULL) {
        ngx_explicit_memzero(p, last - p);
        return NGX_ERROR;
    }

    ngx_explicit_memzero(p, last - p);

    return NGX_OK;
}


static size_t
ngx_http_sf_oauth_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    ngx_http_sf_oauth_transfer_t *tr = userdata;

    size_t  n;

    n = size * nmemb;

    if (n > NGX_HTTP_SF_OAUTH_BODY_MAX - tr->body_len) {
        tr->too_large = 1;
        return 0;
    }

    ngx_memcpy(tr->body + tr->body_len, ptr, n);
    tr->body_len += n;

    return n;
}


static void
ngx_http_sf_oauth_transfer_free(ngx_http_sf_oauth_transfer_t *tr)
{
    struct curl_slist  *sl;

    if (tr->queue.next) {
        ngx_queue_remove(&tr->queue);
        ngx_http_sf_oauth_in_flight--;
    }

    if (tr->easy) {
        curl_multi_remove_handle(ngx_http_sf_oauth_multi, tr->easy);
        curl_easy_cleanup(tr->easy);
    }

    if (tr->headers) {
        for (sl = tr->headers; sl; sl = sl->next) {
            ngx_explicit_memzero(sl->data, ngx_strlen(sl->data));
        }

        curl_slist_free_all(tr->headers);
    }

    /* the post body holds the client secret and the refresh token */
    if (tr->post) {
        ngx_explicit_memzero(tr->post, tr->post_len);
    }

    if (tr->body) {
        ngx_explicit_memzero(tr->body, tr->body_len);
    }

    ngx_destroy_pool(tr->pool);
}


static int
ngx_http_sf_oauth_socket(CURL *easy, curl_socket_t s, int what, void *userp,
    void *socketp)
{
    ngx_connection_t  *c = socketp;

    ngx_http_sf_oauth_transfer_t  *tr;

    if (what == CURL_POLL_REMOVE) {
        if (c) {
            if (c->read->active || c->write->active) {

                /*
                 * libcurl may report a socket removed after it closed it
                 * (a connection closed with no transfer attached, as on
                 * exit): closing it took it out of epoll already, and
                 * epoll_ctl() would fail with EBADF, an alert
                 */

                if (fcntl(s, F_GETFD) == -1 && ngx_errno == NGX_EBADF) {
                    c->read->active = 0;
                    c->write->active = 0;

                } else {
                    ngx_del_conn(c, 0);
                }
            }

            if (c->read->posted) {
                ngx_delete_posted_event(c->read);
            }

            if (c->write->posted) {
                ngx_delete_posted_event(c->write);
            }

            ngx_http_sf_oauth_client_close(c);

            curl_multi_assign(ngx_http_sf_oauth_multi, s, NULL);
        }

        return 0;
    }

    if (c == NULL) {
        c = ngx_http_sf_oauth_client_connection(s);
        if (c == NULL) {
            return -1;
        }

        curl_multi_assign(ngx_http_sf_oauth_multi, s, c);
    }

    /*
     * the log says what the transfer on the socket now is for: curl may
     * give a connection that it keeps to the next transfer
     */

    tr = NULL;

    if (easy
        && curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &tr)
           == CURLE_OK
        && tr)
    {
        c->log->action = tr->action;
    }

    /* level-triggered (flags 0): curl may leave data unread */

    if (what & CURL_POLL_IN) {
        if (!c->read->active
            && ngx_add_event(c->read, NGX_READ_EVENT, 0) != NGX_OK)
        {
            return -1;
        }

    } else if (c->read->active) {
        if (ngx_del_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
            return -1;
        }
    }

    if (what & CURL_POLL_OUT) {
        if (!c->write->active
            && ngx_add_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK)
        {
            return -1;
        }

    } else if (c->write->active) {
        if (ngx_del_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            return -1;
        }
    }

    return 0;
}


/* a connection for a socket of curl's, with a log of its own */

static ngx_connection_t *
ngx_http_sf_oauth_client_connection(curl_socket_t s)
{
    ngx_log_t         *log;
    ngx_connection_t  *c;

    log = ngx_alloc(sizeof(ngx_log_t), ngx_cycle->log);
    if (log == NULL) {
        return NULL;
    }

    *log = *ngx_cycle->log;
    log->handler = ngx_http_sf_oauth_client_log_error;
    log->data = NULL;

    c = ngx_get_connection(s, log);
    if (c == NULL) {
        ngx_free(log);
        return NULL;
    }

    log->connection = c->number;

    c->read->handler = ngx_http_sf_oauth_event_handler;
    c->write->handler = ngx_http_sf_oauth_event_handler;
    c->read->log = log;
    c->write->log = log;

    return c;
}


/* curl closes the socket: the connection and its log go */

static void
ngx_http_sf_oauth_client_close(ngx_connection_t *c)
{
    ngx_log_t  *log;

    log = c->log;

    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;

    ngx_free(log);
}


/* what nginx adds to a line of the connection's: its action */

static u_char *
ngx_http_sf_oauth_client_log_error(ngx_log_t *log, u_char *buf, size_t len)
{
    if (log->action == NULL) {
        return buf;
    }

    return ngx_snprintf(buf, len, " while %s", log->action);
}


static int
ngx_http_sf_oauth_timer(CURLM *multi, long timeout_ms, void *userp)
{
    /*
     * While a token request is in flight, a graceful shutdown (reload,
     * quit) waits for it, at most the credential's timeout: a refresh
     * token that Salesforce rotates in it must reach the zone.
     */

    ngx_http_sf_oauth_timer_event.cancelable =
                                           (ngx_http_sf_oauth_in_flight == 0);

    if (timeout_ms < 0) {
        if (ngx_http_sf_oauth_timer_event.timer_set) {
            ngx_del_timer(&ngx_http_sf_oauth_timer_event);
        }

        return 0;
    }

    ngx_add_timer(&ngx_http_sf_oauth_timer_event, (ngx_msec_t) timeout_ms);

    return 0;
}


static void
ngx_http_sf_oauth_event_handler(ngx_event_t *ev)
{
    int                running;
    ngx_connection_t  *c;

    c = ev->data;

    if (c->close) {
        /*
         * worker_shutdown_timeout ran out (ngx_shutdown_timer_handler()
         * closes every connection once).  A token request is bounded by
         * its credential's timeout, and a refresh token rotated in it is
         * lost if it is dropped: it is given that time, and the worker
         * exits when it ends (its timer is not cancelable meanwhile).
         */

        c->close = 0;
        c->error = 0;

        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "sf_oauth: worker_shutdown_timeout ran out during a "
                      "token request: the worker exits when it ends, "
                      "within the credential's timeout");
        return;
    }

    curl_multi_socket_action(ngx_http_sf_oauth_multi, c->fd,
                             ev->write ? CURL_CSELECT_OUT : CURL_CSELECT_IN,
                             &running);

    ngx_http_sf_oauth_check_done();
}


static void
ngx_http_sf_oauth_timer_handler(ngx_event_t *ev)
{
    int  running;

    curl_multi_socket_action(ngx_http_sf_oauth_multi, CURL_SOCKET_TIMEOUT, 0,
                             &running);

    ngx_http_sf_oauth_check_done();
}


static void
ngx_http_sf_oauth_check_done(void)
{
    int                            left;
    CURLMsg                       *msg;
    ngx_http_sf_oauth_transfer_t  *tr;

    while ((msg = curl_multi_info_read(ngx_http_sf_oauth_multi, &left))) {

        if (msg->msg != CURLMSG_DONE) {
            continue;
        }

        tr = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &tr);

        if (tr == NULL) {
            ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                          "sf_oauth: finished transfer without context");
            continue;
        }

        /* msg is invalid once the handle is removed: take the code first */
        ngx_http_sf_oauth_finish(tr, msg->data.result);
    }
}


static void
ngx_http_sf_oauth_finish(ngx_http_sf_oauth_transfer_t *tr, CURLcode code)
{
    long                        status;
    char                       *location;
    ngx_http_sf_oauth_answer_t  answer;

    ngx_memzero(&answer, sizeof(ngx_http_sf_oauth_answer_t));

    status = 0;
    curl_easy_getinfo(tr->easy, CURLINFO_RESPONSE_CODE, &status);

    if (tr->too_large) {
        answer.too_large = 1;

    } else if (code != CURLE_OK) {
        answer.error = tr->errbuf[0] ? tr->errbuf : curl_easy_strerror(code);
        answer.timed_out = (code == CURLE_OPERATION_TIMEDOUT);

    } else {
        answer.status = (ngx_uint_t) status;
        answer.body = tr->body;
        answer.len = tr->body_len;

        if (status >= 300 && status < 400) {
            location = NULL;
            curl_easy_getinfo(tr->easy, CURLINFO_REDIRECT_URL, &location);
            answer.location = location;
        }
    }

    if (answer.error) {
        ngx_log_debug4(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                       "sf_oauth: client: request %s (%s) after %M ms: %s",
                       answer.timed_out ? "timed out" : "failed",
                       tr->action, ngx_current_msec - tr->start,
                       answer.error);

    } else {
        ngx_log_debug5(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                       "sf_oauth: client: request finished (%s) after "
                       "%M ms: HTTP %l, %uz bytes%s",
                       tr->action, ngx_current_msec - tr->start, status,
                       tr->body_len,
                       tr->too_large ? ", too large" : "");
    }

    /* the transfer is no longer in flight when its caller hears of it */

    ngx_queue_remove(&tr->queue);
    tr->queue.next = NULL;
    ngx_http_sf_oauth_in_flight--;

    tr->done(&answer, tr->data);

    ngx_http_sf_oauth_transfer_free(tr);
}
