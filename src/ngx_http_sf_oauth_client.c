
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
 */


#include <curl/curl.h>

#include "ngx_http_sf_oauth.h"


struct ngx_http_sf_oauth_transfer_s {
    CURL                        *easy;
    ngx_http_sf_oauth_cred_t    *cred;
    ngx_pool_t                  *pool;
    struct curl_slist           *headers;
    char                        *post;
    size_t                       post_len;
    u_char                      *body;
    size_t                       body_len;
    ngx_uint_t                   generation;
    unsigned                     too_large:1;
    unsigned                     introspect:1;
    unsigned                     identity:1;
    ngx_http_sf_oauth_who_t      who;
    char                         errbuf[CURL_ERROR_SIZE];
};


static int ngx_http_sf_oauth_socket(CURL *easy, curl_socket_t s, int what,
    void *userp, void *socketp);
static int ngx_http_sf_oauth_timer(CURLM *multi, long timeout_ms,
    void *userp);
static void ngx_http_sf_oauth_event_handler(ngx_event_t *ev);
static void ngx_http_sf_oauth_timer_handler(ngx_event_t *ev);
static void ngx_http_sf_oauth_check_done(void);
static void ngx_http_sf_oauth_abandon(ngx_cycle_t *cycle, const char *when);
static void ngx_http_sf_oauth_finish(ngx_http_sf_oauth_transfer_t *tr,
    CURLcode code);
static void ngx_http_sf_oauth_transfer_free(ngx_http_sf_oauth_transfer_t *tr);
static size_t ngx_http_sf_oauth_write(char *ptr, size_t size, size_t nmemb,
    void *userdata);
static ngx_int_t ngx_http_sf_oauth_form_add(ngx_http_sf_oauth_transfer_t *tr,
    u_char *p, const char *name, ngx_str_t *value, u_char **out);
static ngx_http_sf_oauth_transfer_t *ngx_http_sf_oauth_transfer_new(
    ngx_http_sf_oauth_cred_t *cred);
static ngx_int_t ngx_http_sf_oauth_transfer_add(
    ngx_http_sf_oauth_transfer_t *tr, ngx_str_t *url);
static void ngx_http_sf_oauth_identity_done(ngx_http_sf_oauth_transfer_t *tr,
    CURLcode code);


static CURLM             *ngx_http_sf_oauth_multi;
static ngx_uint_t         ngx_http_sf_oauth_in_flight;
static ngx_event_t        ngx_http_sf_oauth_timer_event;
static ngx_connection_t   ngx_http_sf_oauth_timer_conn;


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

    return NGX_OK;
}


/*
 * A cancelable timer event of this module's, not tied to a connection.
 * nginx's timer debug lines read the fd of ev->data as a connection: it
 * points to one with fd -1.
 */

void
ngx_http_sf_oauth_timer_init(ngx_event_t *ev, ngx_event_handler_pt handler,
    ngx_log_t *log)
{
    ngx_http_sf_oauth_timer_conn.fd = (ngx_socket_t) -1;

    ev->handler = handler;
    ev->data = &ngx_http_sf_oauth_timer_conn;
    ev->log = log;
    ev->cancelable = 1;
}


void
ngx_http_sf_oauth_client_exit(ngx_cycle_t *cycle)
{
    ngx_uint_t         i;
    ngx_connection_t  *c;

    if (ngx_http_sf_oauth_multi == NULL) {
        return;
    }

    ngx_http_sf_oauth_abandon(cycle, "on exit");

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
            ngx_free_connection(&c[i]);
            c[i].fd = (ngx_socket_t) -1;
        }
    }

    curl_global_cleanup();
}


/*
 * Drops the token requests in flight, giving their leases back so that
 * another worker takes over at once.  A refresh token that Salesforce
 * rotates in such a request is lost, so this happens only on exit or when
 * worker_shutdown_timeout runs out.
 */

static void
ngx_http_sf_oauth_abandon(ngx_cycle_t *cycle, const char *when)
{
    ngx_uint_t                      i;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_sf_oauth_module);

    cred = smcf->creds.elts;

    for (i = 0; i < smcf->creds.nelts; i++) {
        if (cred[i]->transfer) {
            ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                          "sf_oauth: credential \"%V\": token request "
                          "abandoned %s", &cred[i]->name, when);

            ngx_http_sf_oauth_store_release(cred[i]);
            ngx_http_sf_oauth_transfer_free(cred[i]->transfer);
            cred[i]->transfer = NULL;
            ngx_http_sf_oauth_in_flight--;
        }

        if (cred[i]->identity) {
            ngx_http_sf_oauth_transfer_free(cred[i]->identity);
            cred[i]->identity = NULL;
            ngx_http_sf_oauth_in_flight--;
        }
    }
}


/*
 * Starts a token request: the refresh grant, or with "introspect" set the
 * introspection of the access token in "secret" (of token generation
 * "generation").
 */

ngx_int_t
ngx_http_sf_oauth_client_start(ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *secret, ngx_uint_t introspect, ngx_uint_t generation)
{
    ngx_str_t                     *url;
    const char                    *first, *name;
    u_char                        *p;
    size_t                         len;
    ngx_pool_t                    *pool;
    ngx_http_sf_oauth_transfer_t  *tr;

    tr = ngx_http_sf_oauth_transfer_new(cred);
    if (tr == NULL) {
        return NGX_ERROR;
    }

    pool = tr->pool;
    tr->introspect = introspect;
    tr->generation = generation;

    if (introspect) {
        url = &cred->introspect_url;
        first = "token_type_hint=access_token";
        name = "token";

    } else {
        url = &cred->token_url;
        first = "grant_type=refresh_token";
        name = "refresh_token";
    }

    /* every value may triple when percent-encoded */
    len = ngx_strlen(first) + sizeof("&client_id=&client_secret=&=")
          + ngx_strlen(name)
          + 3 * (cred->client_id.len + cred->client_secret.len
                 + secret->len);

    p = ngx_pnalloc(pool, len);
    if (p == NULL) {
        goto failed;
    }

    tr->post = (char *) p;
    p = ngx_cpymem(p, first, ngx_strlen(first));

    if (ngx_http_sf_oauth_form_add(tr, p, "client_id", &cred->client_id, &p)
        != NGX_OK
        || (cred->client_secret.len
            && ngx_http_sf_oauth_form_add(tr, p, "client_secret",
                                          &cred->client_secret, &p)
               != NGX_OK)
        || ngx_http_sf_oauth_form_add(tr, p, name, secret, &p) != NGX_OK)
    {
        goto failed;
    }

    tr->post_len = p - (u_char *) tr->post;

    /* the post body is only pointed to */

    curl_easy_setopt(tr->easy, CURLOPT_POST, 1L);
    curl_easy_setopt(tr->easy, CURLOPT_POSTFIELDS, tr->post);
    curl_easy_setopt(tr->easy, CURLOPT_POSTFIELDSIZE, (long) tr->post_len);

    if (ngx_http_sf_oauth_transfer_add(tr, url) != NGX_OK) {
        goto failed;
    }

    cred->transfer = tr;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": token request to \"%V\"",
                   &cred->name, url);

    return NGX_OK;

failed:

    ngx_http_sf_oauth_transfer_free(tr);

    return NGX_ERROR;
}


/*
 * Reads the identity service, the "id" URL of a token answer, on the token
 * endpoint's host: ORIGIN/id/ORG_ID/USER_ID, with the access token.  What
 * it says of the user goes to the zone, for SOAP login() emulation.  It
 * runs beside the token requests, under no lease, at most one at a time
 * per credential and worker; a failure costs only the names in userInfo.
 */

ngx_int_t
ngx_http_sf_oauth_client_identity(ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *org_id, ngx_str_t *user_id, ngx_str_t *token)
{
    u_char                        *p, *host, *last;
    ngx_str_t                      url;
    ngx_http_sf_oauth_transfer_t  *tr;

    if (cred->identity) {
        return NGX_OK;
    }

    last = cred->token_url.data + cred->token_url.len;

    host = ngx_strlcasestrn(cred->token_url.data, last, (u_char *) "://",
                            sizeof("://") - 1 - 1);
    if (host == NULL) {
        return NGX_ERROR;
    }

    host += sizeof("://") - 1;

    for (p = host; p < last && *p != '/' && *p != '?' && *p != '#'; p++) {
        /* void */
    }

    tr = ngx_http_sf_oauth_transfer_new(cred);
    if (tr == NULL) {
        return NGX_ERROR;
    }

    tr->identity = 1;

    url.len = (p - cred->token_url.data) + sizeof("/id//") - 1
              + org_id->len + user_id->len;
    url.data = ngx_pnalloc(tr->pool, url.len + 1);

    p = (url.data == NULL) ? NULL
        : ngx_cpymem(url.data, cred->token_url.data,
                     p - cred->token_url.data);

    tr->who.user_id.data = ngx_pnalloc(tr->pool, user_id->len);
    tr->post = ngx_pnalloc(tr->pool, sizeof("Authorization: Bearer ")
                                     + token->len);

    if (p == NULL || tr->who.user_id.data == NULL || tr->post == NULL) {
        goto failed;
    }

    *ngx_sprintf(p, "/id/%V/%V", org_id, user_id) = '\0';

    tr->who.user_id.len = ngx_cpymem(tr->who.user_id.data, user_id->data,
                                     user_id->len)
                          - tr->who.user_id.data;

    /* the header holds the token: wiped with the post body at the end */
    tr->post_len = ngx_sprintf((u_char *) tr->post, "Authorization: Bearer %V",
                               token)
                   - (u_char *) tr->post;
    tr->post[tr->post_len] = '\0';

    if (curl_slist_append(tr->headers, tr->post) == NULL) {
        goto failed;
    }

    curl_easy_setopt(tr->easy, CURLOPT_HTTPGET, 1L);

    if (ngx_http_sf_oauth_transfer_add(tr, &url) != NGX_OK) {
        goto failed;
    }

    cred->identity = tr;
    cred->identity_tried = ngx_current_msec;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": identity request to \"%V\"",
                   &cred->name, &url);

    return NGX_OK;

failed:

    ngx_http_sf_oauth_transfer_free(tr);

    return NGX_ERROR;
}


/* a transfer: its pool, its answer's buffer, its easy handle, JSON wanted */

static ngx_http_sf_oauth_transfer_t *
ngx_http_sf_oauth_transfer_new(ngx_http_sf_oauth_cred_t *cred)
{
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
    tr->cred = cred;

    tr->body = ngx_pnalloc(pool, NGX_HTTP_SF_OAUTH_BODY_MAX);
    if (tr->body == NULL) {
        ngx_destroy_pool(pool);
        return NULL;
    }

    tr->easy = curl_easy_init();
    tr->headers = curl_slist_append(NULL, "Accept: application/json");

    if (tr->easy == NULL || tr->headers == NULL) {
        ngx_http_sf_oauth_transfer_free(tr);
        return NULL;
    }

    return tr;
}


/*
 * The options every transfer has, and the transfer on the multi handle.
 * curl copies the URL.
 */

static ngx_int_t
ngx_http_sf_oauth_transfer_add(ngx_http_sf_oauth_transfer_t *tr,
    ngx_str_t *url)
{
    CURLMcode                  mc;
    ngx_http_sf_oauth_cred_t  *cred;

    cred = tr->cred;

    if (curl_easy_setopt(tr->easy, CURLOPT_URL, url->data)
        != CURLE_OK
        || curl_easy_setopt(tr->easy, CURLOPT_PROTOCOLS_STR, "http,https")
           != CURLE_OK)
    {
        return NGX_ERROR;
    }

    curl_easy_setopt(tr->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(tr->easy, CURLOPT_PRIVATE, tr);
    curl_easy_setopt(tr->easy, CURLOPT_ERRORBUFFER, tr->errbuf);
    curl_easy_setopt(tr->easy, CURLOPT_HTTPHEADER, tr->headers);
    curl_easy_setopt(tr->easy, CURLOPT_WRITEFUNCTION, ngx_http_sf_oauth_write);
    curl_easy_setopt(tr->easy, CURLOPT_WRITEDATA, tr);
    curl_easy_setopt(tr->easy, CURLOPT_TIMEOUT_MS, (long) cred->timeout);
    curl_easy_setopt(tr->easy, CURLOPT_CONNECTTIMEOUT_MS,
                     (long) cred->timeout);
    curl_easy_setopt(tr->easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(tr->easy, CURLOPT_SSL_VERIFYPEER,
                     cred->ssl_verify ? 1L : 0L);
    curl_easy_setopt(tr->easy, CURLOPT_SSL_VERIFYHOST,
                     cred->ssl_verify ? 2L : 0L);

    if (cred->ca_file.len) {
        curl_easy_setopt(tr->easy, CURLOPT_CAINFO, cred->ca_file.data);
    }
    curl_easy_setopt(tr->easy, CURLOPT_USERAGENT,
                     "ngx_http_sf_oauth_module");

    mc = curl_multi_add_handle(ngx_http_sf_oauth_multi, tr->easy);
    if (mc != CURLM_OK) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "sf_oauth: curl_multi_add_handle() failed: %s",
                      curl_multi_strerror(mc));
        return NGX_ERROR;
    }

    ngx_http_sf_oauth_in_flight++;

    return NGX_OK;
}


static ngx_int_t
ngx_http_sf_oauth_form_add(ngx_http_sf_oauth_transfer_t *tr, u_char *p,
    const char *name, ngx_str_t *value, u_char **out)
{
    char    *esc;
    size_t   len;

    esc = curl_easy_escape(NULL, (char *) value->data, (int) value->len);
    if (esc == NULL) {
        return NGX_ERROR;
    }

    len = ngx_strlen(esc);

    *p++ = '&';
    p = ngx_cpymem(p, name, ngx_strlen(name));
    *p++ = '=';
    p = ngx_cpymem(p, esc, len);

    ngx_explicit_memzero(esc, len);
    curl_free(esc);

    *out = p;

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

    if (what == CURL_POLL_REMOVE) {
        if (c) {
            if (c->read->active || c->write->active) {
                ngx_del_conn(c, 0);
            }

            if (c->read->posted) {
                ngx_delete_posted_event(c->read);
            }

            if (c->write->posted) {
                ngx_delete_posted_event(c->write);
            }

            ngx_free_connection(c);
            c->fd = (ngx_socket_t) -1;

            curl_multi_assign(ngx_http_sf_oauth_multi, s, NULL);
        }

        return 0;
    }

    if (c == NULL) {
        c = ngx_get_connection(s, ngx_cycle->log);
        if (c == NULL) {
            return -1;
        }

        c->read->handler = ngx_http_sf_oauth_event_handler;
        c->write->handler = ngx_http_sf_oauth_event_handler;
        c->read->log = c->log;
        c->write->log = c->log;

        curl_multi_assign(ngx_http_sf_oauth_multi, s, c);
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
        /* worker_shutdown_timeout ran out: it wins over the wait above */
        ngx_http_sf_oauth_abandon((ngx_cycle_t *) ngx_cycle,
                                  "at worker_shutdown_timeout");
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
    ngx_http_sf_oauth_cred_t   *cred;
    ngx_http_sf_oauth_token_t   tok;

    if (tr->identity) {
        ngx_http_sf_oauth_identity_done(tr, code);
        return;
    }

    cred = tr->cred;
    cred->transfer = NULL;
    ngx_http_sf_oauth_in_flight--;

    status = 0;
    curl_easy_getinfo(tr->easy, CURLINFO_RESPONSE_CODE, &status);

    if (tr->too_large) {
        ngx_memzero(&tok, sizeof(ngx_http_sf_oauth_token_t));
        ngx_http_sf_oauth_fail(tr->pool, &tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                               "the token endpoint does not answer like "
                               "Salesforce",
                               "the token response body is larger than "
                               "%d bytes", NGX_HTTP_SF_OAUTH_BODY_MAX);

    } else if (code != CURLE_OK) {
        ngx_memzero(&tok, sizeof(ngx_http_sf_oauth_token_t));
        ngx_http_sf_oauth_fail(tr->pool, &tok, NGX_HTTP_SF_OAUTH_TRANSIENT,
                               code == CURLE_OPERATION_TIMEDOUT
                               ? "the token endpoint is slow or unreachable; "
                                 "the module retries with backoff"
                               : "check that token_url is reachable from "
                                 "this host; the module retries with backoff",
                               "token request failed: %s",
                               tr->errbuf[0] ? tr->errbuf
                                             : curl_easy_strerror(code));

    } else if (status >= 300 && status < 400) {
        location = NULL;
        curl_easy_getinfo(tr->easy, CURLINFO_REDIRECT_URL, &location);

        /* an untrusted URL: the parser echoes a known-safe part of it */
        ngx_memzero(&tok, sizeof(ngx_http_sf_oauth_token_t));
        ngx_http_sf_oauth_parse_redirect(tr->pool, status, location, &tok);

    } else if (tr->introspect) {
        ngx_http_sf_oauth_parse_introspect(tr->pool, status, tr->body,
                                           tr->body_len, &tok);

    } else {
        ngx_http_sf_oauth_parse_response(tr->pool, status, tr->body,
                                         tr->body_len, &tok);
    }

    if (tr->introspect) {
        ngx_http_sf_oauth_introspect_done(cred, tr->generation, &tok);
        ngx_http_sf_oauth_transfer_free(tr);
        return;
    }

    ngx_http_sf_oauth_refresh_done(cred, &tok);

    if (tok.ok) {
        ngx_explicit_memzero(tok.access_token.data, tok.access_token.len);

        if (tok.refresh_token.len) {
            ngx_explicit_memzero(tok.refresh_token.data,
                                 tok.refresh_token.len);
        }
    }

    ngx_http_sf_oauth_transfer_free(tr);
}


/* the identity service answered: what it says goes to the zone */

static void
ngx_http_sf_oauth_identity_done(ngx_http_sf_oauth_transfer_t *tr,
    CURLcode code)
{
    long                       status;
    ngx_int_t                  rc;
    ngx_http_sf_oauth_cred_t  *cred;

    cred = tr->cred;
    cred->identity = NULL;
    ngx_http_sf_oauth_in_flight--;

    status = 0;
    curl_easy_getinfo(tr->easy, CURLINFO_RESPONSE_CODE, &status);

    rc = (code == CURLE_OK && !tr->too_large)
         ? ngx_http_sf_oauth_parse_who(tr->pool, status, tr->body,
                                       tr->body_len, &tr->who)
         : NGX_DECLINED;

    if (rc == NGX_OK) {
        ngx_http_sf_oauth_store_identity_set(cred, &tr->who);

        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": identity of user %V "
                      "read", &cred->name, &tr->who.user_id);

    } else {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": the identity service "
                      "did not answer with the user's identity (%s, HTTP %l): "
                      "SOAP login() answers carry the ids only; check that "
                      "the connected app's scopes include \"id\" or "
                      "\"openid\"", &cred->name,
                      code != CURLE_OK ? curl_easy_strerror(code) : "ok",
                      status);
    }

    ngx_http_sf_oauth_transfer_free(tr);
}
