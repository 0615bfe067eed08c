
/*
 * The metrics: sf_oauth_info in Prometheus's text exposition format
 * (sf_oauth_info?format=prometheus), and what it shows that nothing else
 * counts: requests by $sf_oauth_status, and the org's API usage that
 * Salesforce reports on every REST response (Sforce-Limit-Info:
 * api-usage=N/M, the API requests of the last 24 hours and the limit).
 *
 * A request's status and a response's usage are counted in the worker,
 * without a lock, and go to the zone at most once a second per worker
 * (on the next request, or on a timer if none comes): the hot path takes
 * no lock for them.  The counters live in the zone, so they survive a
 * reload as the tokens do.  Reading takes the zone's lock for the copy of
 * one record at a time.
 *
 * Names follow Prometheus's rules: the sf_oauth_ prefix, base units,
 * _total on counters, and "credential" and "zone" as the only labels.
 * No secret and no fingerprint is ever a label value.
 */


#include "ngx_http_sf_oauth.h"


#define NGX_HTTP_SF_OAUTH_FLUSH          1000


/* how a metric's value is read from a record */
#define NGX_HTTP_SF_OAUTH_M_FIELD        0  /* the ngx_uint_t at offset */
#define NGX_HTTP_SF_OAUTH_M_TOKENS       1  /* every token request */
#define NGX_HTTP_SF_OAUTH_M_VALID        2
#define NGX_HTTP_SF_OAUTH_M_AGE          3
#define NGX_HTTP_SF_OAUTH_M_BACKOFF      4
#define NGX_HTTP_SF_OAUTH_M_HELD         5
#define NGX_HTTP_SF_OAUTH_M_API          6  /* at offset, once Salesforce
                                               has said */
#define NGX_HTTP_SF_OAUTH_M_HISTOGRAM    7


typedef struct {
    const char                  *name;
    const char                  *type;
    const char                  *help;
    ngx_uint_t                   read;
    size_t                       offset;
} ngx_http_sf_oauth_metric_t;


#define ngx_http_sf_oauth_field(f)                                            \
    NGX_HTTP_SF_OAUTH_M_FIELD, offsetof(ngx_http_sf_oauth_node_t, f)


static void ngx_http_sf_oauth_metrics_counted(ngx_http_sf_oauth_cred_t *cred);
static void ngx_http_sf_oauth_metrics_flush(ngx_http_sf_oauth_cred_t *cred);
static void ngx_http_sf_oauth_metrics_flush_all(ngx_cycle_t *cycle);
static void ngx_http_sf_oauth_metrics_timer(ngx_event_t *ev);
static ngx_int_t ngx_http_sf_oauth_metrics_value(
    ngx_http_sf_oauth_metric_t *m, ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node, time_t now, ngx_uint_t *v);
static u_char *ngx_http_sf_oauth_metrics_histogram(u_char *p, u_char *last,
    ngx_http_sf_oauth_metric_t *m, ngx_http_sf_oauth_node_t *node,
    ngx_http_sf_oauth_cred_t *cred);
static u_char *ngx_http_sf_oauth_metrics_head(u_char *p, u_char *last,
    ngx_http_sf_oauth_metric_t *m);
static u_char *ngx_http_sf_oauth_metrics_labels(u_char *p, u_char *last,
    ngx_http_sf_oauth_cred_t *cred);


static ngx_event_t  ngx_http_sf_oauth_metrics_event;


/* the upper bounds of the duration histogram's buckets, in seconds */
static const char  *ngx_http_sf_oauth_le[NGX_HTTP_SF_OAUTH_BUCKETS] = {
    "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30"
};


static ngx_http_sf_oauth_metric_t  ngx_http_sf_oauth_metrics[] = {

    { "sf_oauth_token_requests_total", "counter",
      "Token requests answered by the token endpoint or failed in transport",
      NGX_HTTP_SF_OAUTH_M_TOKENS, 0 },
    { "sf_oauth_token_requests_succeeded_total", "counter",
      "Token requests that got an access token",
      ngx_http_sf_oauth_field(token_ok) },
    { "sf_oauth_token_requests_transient_failures_total", "counter",
      "Token requests that failed in a way a retry may cure (backoff)",
      ngx_http_sf_oauth_field(token_transient) },
    { "sf_oauth_token_requests_operator_failures_total", "counter",
      "Token requests that failed in a way only an operator can fix (hold)",
      ngx_http_sf_oauth_field(token_operator) },
    { "sf_oauth_replays_total", "counter",
      "Replays of requests held on a dead session, with a new token",
      ngx_http_sf_oauth_field(replays) },
    { "sf_oauth_rejected_tokens_total", "counter",
      "Access tokens that Salesforce said were dead",
      ngx_http_sf_oauth_field(invalidations) },
    { "sf_oauth_ahead_refreshes_total", "counter",
      "Refreshes ahead of the token's expiry",
      ngx_http_sf_oauth_field(ahead_refreshes) },
    { "sf_oauth_wait_timeouts_total", "counter",
      "Requests that gave up waiting for a token refresh",
      ngx_http_sf_oauth_field(wait_timeouts) },
    { "sf_oauth_requests_hit_total", "counter",
      "Requests sent with the cached token ($sf_oauth_status HIT)",
      ngx_http_sf_oauth_field(requests[NGX_HTTP_SF_OAUTH_HIT]) },
    { "sf_oauth_requests_wait_total", "counter",
      "Requests that waited for a refresh ($sf_oauth_status WAIT)",
      ngx_http_sf_oauth_field(requests[NGX_HTTP_SF_OAUTH_WAIT]) },
    { "sf_oauth_requests_retry_total", "counter",
      "Requests replayed with a new token ($sf_oauth_status RETRY)",
      ngx_http_sf_oauth_field(requests[NGX_HTTP_SF_OAUTH_RETRY]) },
    { "sf_oauth_requests_error_total", "counter",
      "Requests answered 502, no token to be had ($sf_oauth_status ERROR)",
      ngx_http_sf_oauth_field(requests[NGX_HTTP_SF_OAUTH_ERROR]) },
    { "sf_oauth_token_valid", "gauge",
      "1 when the credential has a valid token, else 0",
      NGX_HTTP_SF_OAUTH_M_VALID, 0 },
    { "sf_oauth_token_age_seconds", "gauge",
      "Seconds since the current token was issued",
      NGX_HTTP_SF_OAUTH_M_AGE, 0 },
    { "sf_oauth_backoff_seconds", "gauge",
      "Seconds left before the next token request after a failure",
      NGX_HTTP_SF_OAUTH_M_BACKOFF, 0 },
    { "sf_oauth_token_held", "gauge",
      "1 while the credential has no token and its last token request "
      "failed in a way only an operator can fix (hold), or it is not "
      "connected, else 0",
      NGX_HTTP_SF_OAUTH_M_HELD, 0 },
    { "sf_oauth_api_requests_used", "gauge",
      "The org's API requests in the last 24 hours (Sforce-Limit-Info)",
      NGX_HTTP_SF_OAUTH_M_API,
      offsetof(ngx_http_sf_oauth_node_t, api_used) },
    { "sf_oauth_api_requests_limit", "gauge",
      "The org's API request limit for 24 hours (Sforce-Limit-Info)",
      NGX_HTTP_SF_OAUTH_M_API,
      offsetof(ngx_http_sf_oauth_node_t, api_limit) },
    { "sf_oauth_token_request_duration_seconds", "histogram",
      "How long token requests took",
      NGX_HTTP_SF_OAUTH_M_HISTOGRAM, 0 },

    { NULL, NULL, NULL, 0, 0 }
};


ngx_int_t
ngx_http_sf_oauth_metrics_init(ngx_cycle_t *cycle)
{
    ngx_http_sf_oauth_timer_init(&ngx_http_sf_oauth_metrics_event,
                                 ngx_http_sf_oauth_metrics_timer,
                                 cycle->log);
    return NGX_OK;
}


/* what this worker counted goes to the zone before it exits */

void
ngx_http_sf_oauth_metrics_exit(ngx_cycle_t *cycle)
{
    if (ngx_http_sf_oauth_metrics_event.timer_set) {
        ngx_del_timer(&ngx_http_sf_oauth_metrics_event);
    }

    ngx_http_sf_oauth_metrics_flush_all(cycle);
}


/* a request's $sf_oauth_status, counted in the log phase */

void
ngx_http_sf_oauth_metrics_count(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t status)
{
    if (status == 0 || status >= NGX_HTTP_SF_OAUTH_STATUSES) {
        return;
    }

    cred->rt.counted[status]++;
    ngx_http_sf_oauth_metrics_counted(cred);
}


/*
 * Sforce-Limit-Info of a response: "api-usage=N/M", among other items
 * ("per-app-api-usage=..." is another, and not this one).
 */

void
ngx_http_sf_oauth_metrics_usage(ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *value)
{
    u_char      *p, *last;
    ngx_int_t    used, limit;

    p = value->data;
    last = p + value->len;

    for ( ;; ) {
        p = ngx_strlcasestrn(p, last, (u_char *) "api-usage=",
                             sizeof("api-usage=") - 1 - 1);
        if (p == NULL) {
            return;
        }

        if (p == value->data || p[-1] == ' ' || p[-1] == ',' || p[-1] == ';')
        {
            break;
        }

        p += sizeof("api-usage=") - 1;
    }

    p += sizeof("api-usage=") - 1;

    used = 0;

    while (p < last && *p >= '0' && *p <= '9' && used < NGX_MAX_INT32_VALUE) {
        used = used * 10 + (*p++ - '0');
    }

    if (p == last || *p++ != '/') {
        return;
    }

    limit = 0;

    while (p < last && *p >= '0' && *p <= '9' && limit < NGX_MAX_INT32_VALUE) {
        limit = limit * 10 + (*p++ - '0');
    }

    if (limit == 0) {
        return;
    }

    cred->rt.api_used = used;
    cred->rt.api_limit = limit;
    cred->rt.api_msec = ngx_current_msec;
    ngx_http_sf_oauth_metrics_counted(cred);
}


static void
ngx_http_sf_oauth_metrics_flush(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_http_sf_oauth_store_metrics(cred, cred->rt.counted, cred->rt.api_used,
                                    cred->rt.api_limit, cred->rt.api_msec);

    ngx_memzero(cred->rt.counted, sizeof(cred->rt.counted));
    cred->rt.api_limit = 0;
    cred->rt.unflushed = 0;
    cred->rt.flushed = ngx_current_msec;
}


/*
 * Counted in this worker: to the zone now if the last flush was a second
 * ago or more, else in a second at the latest.
 */

static void
ngx_http_sf_oauth_metrics_counted(ngx_http_sf_oauth_cred_t *cred)
{
    cred->rt.unflushed = 1;

    if (ngx_current_msec - cred->rt.flushed >= NGX_HTTP_SF_OAUTH_FLUSH) {
        ngx_http_sf_oauth_metrics_flush(cred);
        return;
    }

    if (!ngx_http_sf_oauth_metrics_event.timer_set) {
        ngx_add_timer(&ngx_http_sf_oauth_metrics_event,
                      NGX_HTTP_SF_OAUTH_FLUSH);
    }
}


static void
ngx_http_sf_oauth_metrics_flush_all(ngx_cycle_t *cycle)
{
    ngx_uint_t                      i;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_sf_oauth_module);
    cred = smcf->creds.elts;

    for (i = 0; i < smcf->creds.nelts; i++) {
        if (cred[i]->rt.unflushed && cred[i]->rt.node) {
            ngx_http_sf_oauth_metrics_flush(cred[i]);
        }
    }
}


/* a second after counts with no request since: they go to the zone */

static void
ngx_http_sf_oauth_metrics_timer(ngx_event_t *ev)
{
    ngx_http_sf_oauth_metrics_flush_all((ngx_cycle_t *) ngx_cycle);
}


/* sf_oauth_info?format=prometheus */

ngx_int_t
ngx_http_sf_oauth_metrics_handler(ngx_http_request_t *r)
{
    u_char                         *p, *last;
    size_t                          len;
    time_t                          now;
    ngx_buf_t                      *b;
    ngx_uint_t                      i, n, v;
    ngx_http_sf_oauth_node_t       *nodes, *node;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_sf_oauth_metric_t     *m;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_sf_oauth_module);
    cred = smcf->creds.elts;
    n = smcf->creds.nelts;
    now = ngx_time();

    /* this worker's own counts first, then a copy of each record */

    ngx_http_sf_oauth_metrics_flush_all((ngx_cycle_t *) ngx_cycle);

    nodes = ngx_palloc(r->pool,
                       ngx_max(n, 1) * sizeof(ngx_http_sf_oauth_node_t));
    if (nodes == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < n; i++) {
        ngx_http_sf_oauth_store_snapshot(cred[i], &nodes[i]);
    }

    /* each sample: its name, labels (escaped at worst) and a number */

    len = 0;

    for (m = ngx_http_sf_oauth_metrics; m->name; m++) {
        len += sizeof("# HELP  \n# TYPE  \n") + 2 * ngx_strlen(m->name)
               + ngx_strlen(m->help) + ngx_strlen(m->type)
               + n * (NGX_HTTP_SF_OAUTH_BUCKETS + 3)
                   * (ngx_strlen(m->name) + sizeof("_bucket{credential=\"\","
                                                   "zone=\"\",le=\"+Inf\"} \n")
                      + 2 * NGX_HTTP_SF_OAUTH_NAME_MAX
                      + 2 * NGX_HTTP_SF_OAUTH_ZONE_NAME_MAX
                      + NGX_INT64_LEN + 8);
    }

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        goto failed;
    }

    p = b->last;
    last = b->end;

    for (m = ngx_http_sf_oauth_metrics; m->name; m++) {

        p = ngx_http_sf_oauth_metrics_head(p, last, m);

        for (i = 0; i < n; i++) {
            node = &nodes[i];

            if (m->read == NGX_HTTP_SF_OAUTH_M_HISTOGRAM) {
                p = ngx_http_sf_oauth_metrics_histogram(p, last, m, node,
                                                        cred[i]);
                continue;
            }

            if (ngx_http_sf_oauth_metrics_value(m, cred[i], node, now, &v)
                != NGX_OK)
            {
                continue;
            }

            p = ngx_slprintf(p, last, "%s", m->name);
            p = ngx_http_sf_oauth_metrics_labels(p, last, cred[i]);
            p = ngx_slprintf(p, last, "} %ui\n", v);
        }
    }

    b->last = p;

    for (i = 0; i < n; i++) {
        ngx_explicit_memzero(&nodes[i], sizeof(ngx_http_sf_oauth_node_t));
    }

    return ngx_http_sf_oauth_send(r, NGX_HTTP_OK,
                                  "text/plain; version=0.0.4; charset=utf-8",
                                  b);

failed:

    for (i = 0; i < n; i++) {
        ngx_explicit_memzero(&nodes[i], sizeof(ngx_http_sf_oauth_node_t));
    }

    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/* a metric's value in a record; NGX_DECLINED: no sample */

static ngx_int_t
ngx_http_sf_oauth_metrics_value(ngx_http_sf_oauth_metric_t *m,
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_node_t *node,
    time_t now, ngx_uint_t *v)
{
    ngx_msec_int_t  left;

    switch (m->read) {

    case NGX_HTTP_SF_OAUTH_M_FIELD:
        *v = *(ngx_uint_t *) ((u_char *) node + m->offset);
        return NGX_OK;

    case NGX_HTTP_SF_OAUTH_M_TOKENS:
        *v = node->token_ok + node->token_transient + node->token_operator;
        return NGX_OK;

    case NGX_HTTP_SF_OAUTH_M_VALID:
        *v = (node->state == NGX_HTTP_SF_OAUTH_VALID);
        return NGX_OK;

    case NGX_HTTP_SF_OAUTH_M_AGE:
        if (node->state != NGX_HTTP_SF_OAUTH_VALID || node->token_time == 0) {
            /* no token: no sample, rather than a made-up age */
            return NGX_DECLINED;
        }

        *v = (now > node->token_time) ? now - node->token_time : 0;
        return NGX_OK;

    case NGX_HTTP_SF_OAUTH_M_BACKOFF:
        left = node->backoff_until - ngx_current_msec;
        *v = (node->state == NGX_HTTP_SF_OAUTH_FAILED && left > 0)
             ? (left + 999) / 1000 : 0;
        return NGX_OK;

    case NGX_HTTP_SF_OAUTH_M_HELD:
        /* a credential not connected is held until a connection */
        *v = (node->state == NGX_HTTP_SF_OAUTH_FAILED && node->held)
             || ngx_http_sf_oauth_store_not_connected(cred, node);
        return NGX_OK;

    case NGX_HTTP_SF_OAUTH_M_API:
        if (node->api_limit == 0) {
            /* Salesforce has not said yet */
            return NGX_DECLINED;
        }

        *v = *(ngx_uint_t *) ((u_char *) node + m->offset);
        return NGX_OK;
    }

    return NGX_DECLINED;
}


/* a histogram's cumulative buckets, its sum and its count */

static u_char *
ngx_http_sf_oauth_metrics_histogram(u_char *p, u_char *last,
    ngx_http_sf_oauth_metric_t *m, ngx_http_sf_oauth_node_t *node,
    ngx_http_sf_oauth_cred_t *cred)
{
    ngx_uint_t  j, cum;

    cum = 0;

    for (j = 0; j < NGX_HTTP_SF_OAUTH_BUCKETS; j++) {
        cum += node->duration_bucket[j];
        p = ngx_slprintf(p, last, "%s_bucket", m->name);
        p = ngx_http_sf_oauth_metrics_labels(p, last, cred);
        p = ngx_slprintf(p, last, ",le=\"%s\"} %ui\n",
                         ngx_http_sf_oauth_le[j], cum);
    }

    p = ngx_slprintf(p, last, "%s_bucket", m->name);
    p = ngx_http_sf_oauth_metrics_labels(p, last, cred);
    p = ngx_slprintf(p, last, ",le=\"+Inf\"} %ui\n", node->duration_count);

    p = ngx_slprintf(p, last, "%s_sum", m->name);
    p = ngx_http_sf_oauth_metrics_labels(p, last, cred);
    p = ngx_slprintf(p, last, "} %M.%03M\n",
                     node->duration_sum / 1000, node->duration_sum % 1000);

    p = ngx_slprintf(p, last, "%s_count", m->name);
    p = ngx_http_sf_oauth_metrics_labels(p, last, cred);

    return ngx_slprintf(p, last, "} %ui\n", node->duration_count);
}


static u_char *
ngx_http_sf_oauth_metrics_head(u_char *p, u_char *last,
    ngx_http_sf_oauth_metric_t *m)
{
    return ngx_slprintf(p, last, "# HELP %s %s\n# TYPE %s %s\n",
                        m->name, m->help, m->name, m->type);
}


/*
 * {credential="...",zone="..." — the caller closes it.  The names' own
 * characters need no escape (letters, digits, "_", "-", "."), but a label
 * value is escaped all the same.
 */

static u_char *
ngx_http_sf_oauth_metrics_labels(u_char *p, u_char *last,
    ngx_http_sf_oauth_cred_t *cred)
{
    ngx_uint_t                 i, k;
    ngx_str_t                 *s;
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;

    for (k = 0; k < 2; k++) {
        s = (k == 0) ? &cred->name : &zone->name;

        p = ngx_slprintf(p, last, k == 0 ? "{credential=\"" : ",zone=\"");

        for (i = 0; i < s->len && p + 2 < last; i++) {
            if (s->data[i] == '\\' || s->data[i] == '"') {
                *p++ = '\\';
                *p++ = s->data[i];

            } else if (s->data[i] == '\n') {
                *p++ = '\\';
                *p++ = 'n';

            } else {
                *p++ = s->data[i];
            }
        }

        if (p < last) {
            *p++ = '"';
        }
    }

    return p;
}
