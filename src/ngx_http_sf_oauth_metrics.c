
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
 * _total on counters only, one metric with a label for the outcomes of
 * one thing (result, status, state), and "credential" and "zone" for
 * where.  With &scope=zone, the counters are summed per zone and the
 * gauges that do not add up become counts of credentials by state: a
 * scrape of a zone of many credentials stays small.  No secret and no
 * fingerprint is ever a label value.
 */


#include "ngx_http_sf_oauth.h"


#define NGX_HTTP_SF_OAUTH_FLUSH          1000


/* how a metric's value is read from a record */
#define NGX_HTTP_SF_OAUTH_M_FIELD        0  /* the ngx_uint_t at offset, or
                                               at its label value's */
#define NGX_HTTP_SF_OAUTH_M_VALID        1
#define NGX_HTTP_SF_OAUTH_M_AGE          2
#define NGX_HTTP_SF_OAUTH_M_BACKOFF      3
#define NGX_HTTP_SF_OAUTH_M_HELD         4
#define NGX_HTTP_SF_OAUTH_M_API          5  /* at offset, once Salesforce
                                               has said */
#define NGX_HTTP_SF_OAUTH_M_HISTOGRAM    6
#define NGX_HTTP_SF_OAUTH_M_STATE        7  /* 1 for the credential's
                                               state, 0 for the others */
#define NGX_HTTP_SF_OAUTH_M_API_RATIO    8  /* used / limit, in 1/10000 */

/* the scopes that show a metric: sf_oauth_info?format=prometheus&scope= */
#define NGX_HTTP_SF_OAUTH_S_CREDENTIAL   1  /* the default */
#define NGX_HTTP_SF_OAUTH_S_ZONE         2
#define NGX_HTTP_SF_OAUTH_S_BOTH         3

/*
 * A metric's values for one credential, or summed for one zone: one per
 * label value, or a histogram's buckets (not cumulative), sum and count
 */
#define NGX_HTTP_SF_OAUTH_SLOTS          (NGX_HTTP_SF_OAUTH_BUCKETS + 2)
#define NGX_HTTP_SF_OAUTH_SUM            NGX_HTTP_SF_OAUTH_BUCKETS
#define NGX_HTTP_SF_OAUTH_COUNT          (NGX_HTTP_SF_OAUTH_BUCKETS + 1)

/* a credential's state, for sf_oauth_credentials{state=...} */
#define NGX_HTTP_SF_OAUTH_C_VALID        0
#define NGX_HTTP_SF_OAUTH_C_HELD         1
#define NGX_HTTP_SF_OAUTH_C_BACKOFF      2
#define NGX_HTTP_SF_OAUTH_C_NOT_CONN     3
#define NGX_HTTP_SF_OAUTH_C_NO_TOKEN     4

/* the longest label value of the tables below */
#define NGX_HTTP_SF_OAUTH_VALUE_MAX      sizeof("transient_failure")


typedef struct {
    const char                  *value;
    size_t                       offset;
} ngx_http_sf_oauth_label_t;


typedef struct {
    const char                  *name;
    const char                  *type;
    const char                  *label;   /* another label than credential
                                             and zone, or NULL */
    ngx_uint_t                   scopes;
    const char                  *help;
    ngx_uint_t                   read;
    size_t                       offset;
    ngx_http_sf_oauth_label_t   *values;  /* the label's values */
} ngx_http_sf_oauth_metric_t;


/* a metric's values, and whether there is a sample of each */
typedef struct {
    ngx_uint_t                   v[NGX_HTTP_SF_OAUTH_SLOTS];
    ngx_uint_t                   set[NGX_HTTP_SF_OAUTH_SLOTS];
} ngx_http_sf_oauth_values_t;


#define NGX_HTTP_SF_OAUTH_NMETRICS                                           \
    (sizeof(ngx_http_sf_oauth_metrics) / sizeof(ngx_http_sf_oauth_metric_t)  \
     - 1)


#define ngx_http_sf_oauth_field(f)                                            \
    NGX_HTTP_SF_OAUTH_M_FIELD, offsetof(ngx_http_sf_oauth_node_t, f)


static void ngx_http_sf_oauth_metrics_counted(ngx_http_sf_oauth_cred_t *cred);
static void ngx_http_sf_oauth_metrics_flush(ngx_http_sf_oauth_cred_t *cred);
static void ngx_http_sf_oauth_metrics_flush_all(ngx_cycle_t *cycle);
static void ngx_http_sf_oauth_metrics_timer(ngx_event_t *ev);
static ngx_int_t ngx_http_sf_oauth_metrics_scope(ngx_http_request_t *r,
    ngx_uint_t *scope);
static ngx_int_t ngx_http_sf_oauth_metrics_refuse(ngx_http_request_t *r);
static ngx_int_t ngx_http_sf_oauth_metrics_zones(ngx_http_request_t *r,
    ngx_http_sf_oauth_main_conf_t *smcf, ngx_http_sf_oauth_values_t **zv);
static size_t ngx_http_sf_oauth_metrics_len(ngx_uint_t scope,
    ngx_uint_t units);
static void ngx_http_sf_oauth_metrics_read(ngx_http_sf_oauth_metric_t *m,
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_node_t *node,
    time_t now, ngx_http_sf_oauth_values_t *vals);
static ngx_uint_t ngx_http_sf_oauth_metrics_state(
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_node_t *node);
static void ngx_http_sf_oauth_metrics_add(ngx_http_sf_oauth_metric_t *m,
    ngx_http_sf_oauth_values_t *sum, ngx_http_sf_oauth_values_t *vals);
static u_char *ngx_http_sf_oauth_metrics_samples(u_char *p, u_char *last,
    ngx_http_sf_oauth_metric_t *m, ngx_str_t *cred, ngx_str_t *zone,
    ngx_http_sf_oauth_values_t *vals);
static u_char *ngx_http_sf_oauth_metrics_histogram(u_char *p, u_char *last,
    ngx_http_sf_oauth_metric_t *m, ngx_str_t *cred, ngx_str_t *zone,
    ngx_http_sf_oauth_values_t *vals);
static u_char *ngx_http_sf_oauth_metrics_head(u_char *p, u_char *last,
    ngx_http_sf_oauth_metric_t *m);
static u_char *ngx_http_sf_oauth_metrics_labels(u_char *p, u_char *last,
    ngx_str_t *cred, ngx_str_t *zone);


static ngx_event_t  ngx_http_sf_oauth_metrics_event;


/* the upper bounds of the duration histogram's buckets, in seconds */
static const char  *ngx_http_sf_oauth_le[NGX_HTTP_SF_OAUTH_BUCKETS] = {
    "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30"
};


/*
 * How token requests ended.  "dropped": the answer came after a reload
 * had changed the credential, or the worker exited before it; neither is
 * stored.  A token request in flight is counted when it ends.
 */
static ngx_http_sf_oauth_label_t  ngx_http_sf_oauth_results[] = {
    { "success", offsetof(ngx_http_sf_oauth_node_t, token_ok) },
    { "transient_failure",
      offsetof(ngx_http_sf_oauth_node_t, token_transient) },
    { "operator_failure",
      offsetof(ngx_http_sf_oauth_node_t, token_operator) },
    { "dropped", offsetof(ngx_http_sf_oauth_node_t, token_dropped) },
    { NULL, 0 }
};


/* $sf_oauth_status, lower case: every status a request is counted with */
static ngx_http_sf_oauth_label_t  ngx_http_sf_oauth_statuses[] = {
    { "hit",
      offsetof(ngx_http_sf_oauth_node_t, requests[NGX_HTTP_SF_OAUTH_HIT]) },
    { "wait",
      offsetof(ngx_http_sf_oauth_node_t, requests[NGX_HTTP_SF_OAUTH_WAIT]) },
    { "retry",
      offsetof(ngx_http_sf_oauth_node_t, requests[NGX_HTTP_SF_OAUTH_RETRY]) },
    { "error",
      offsetof(ngx_http_sf_oauth_node_t, requests[NGX_HTTP_SF_OAUTH_ERROR]) },
    { NULL, 0 }
};


/* a credential's state, one of them: by NGX_HTTP_SF_OAUTH_C_* */
static ngx_http_sf_oauth_label_t  ngx_http_sf_oauth_states[] = {
    { "valid", 0 },
    { "held", 0 },
    { "backoff", 0 },
    { "not_connected", 0 },
    { "no_token", 0 },
    { NULL, 0 }
};


static ngx_http_sf_oauth_metric_t  ngx_http_sf_oauth_metrics[] = {

    { "sf_oauth_token_requests_total", "counter", "result",
      NGX_HTTP_SF_OAUTH_S_BOTH,
      "Token requests by how they ended: success, transient_failure "
      "(backoff), operator_failure (hold), dropped (not stored)",
      ngx_http_sf_oauth_field(token_ok), ngx_http_sf_oauth_results },
    { "sf_oauth_requests_total", "counter", "status",
      NGX_HTTP_SF_OAUTH_S_BOTH,
      "Requests by $sf_oauth_status: hit (the cached token), wait (waited "
      "for a refresh), retry (replayed), error (502, no token)",
      ngx_http_sf_oauth_field(requests), ngx_http_sf_oauth_statuses },
    { "sf_oauth_replays_total", "counter", NULL,
      NGX_HTTP_SF_OAUTH_S_BOTH,
      "Replays of requests held on a dead session, with a new token",
      ngx_http_sf_oauth_field(replays), NULL },
    { "sf_oauth_rejected_tokens_total", "counter", NULL,
      NGX_HTTP_SF_OAUTH_S_BOTH,
      "Access tokens that Salesforce said were dead",
      ngx_http_sf_oauth_field(invalidations), NULL },
    { "sf_oauth_ahead_refreshes_total", "counter", NULL,
      NGX_HTTP_SF_OAUTH_S_BOTH,
      "Refreshes ahead of the token's expiry",
      ngx_http_sf_oauth_field(ahead_refreshes), NULL },
    { "sf_oauth_wait_timeouts_total", "counter", NULL,
      NGX_HTTP_SF_OAUTH_S_BOTH,
      "Requests that gave up waiting for a token refresh",
      ngx_http_sf_oauth_field(wait_timeouts), NULL },
    { "sf_oauth_token_valid", "gauge", NULL,
      NGX_HTTP_SF_OAUTH_S_CREDENTIAL,
      "1 when the credential has a valid token, else 0",
      NGX_HTTP_SF_OAUTH_M_VALID, 0, NULL },
    { "sf_oauth_token_age_seconds", "gauge", NULL,
      NGX_HTTP_SF_OAUTH_S_CREDENTIAL,
      "Seconds since the current token was issued",
      NGX_HTTP_SF_OAUTH_M_AGE, 0, NULL },
    { "sf_oauth_backoff_seconds", "gauge", NULL,
      NGX_HTTP_SF_OAUTH_S_CREDENTIAL,
      "Seconds left before the next token request after a failure",
      NGX_HTTP_SF_OAUTH_M_BACKOFF, 0, NULL },
    { "sf_oauth_token_held", "gauge", NULL,
      NGX_HTTP_SF_OAUTH_S_CREDENTIAL,
      "1 while the credential has no token and its last token request "
      "failed in a way only an operator can fix (hold), or it is not "
      "connected, else 0",
      NGX_HTTP_SF_OAUTH_M_HELD, 0, NULL },
    { "sf_oauth_api_requests_used", "gauge", NULL,
      NGX_HTTP_SF_OAUTH_S_CREDENTIAL,
      "The org's API requests in the last 24 hours (Sforce-Limit-Info)",
      NGX_HTTP_SF_OAUTH_M_API,
      offsetof(ngx_http_sf_oauth_node_t, api_used), NULL },
    { "sf_oauth_api_requests_limit", "gauge", NULL,
      NGX_HTTP_SF_OAUTH_S_CREDENTIAL,
      "The org's API request limit for 24 hours (Sforce-Limit-Info)",
      NGX_HTTP_SF_OAUTH_M_API,
      offsetof(ngx_http_sf_oauth_node_t, api_limit), NULL },
    { "sf_oauth_credentials", "gauge", "state",
      NGX_HTTP_SF_OAUTH_S_ZONE,
      "Credentials of the zone by state: valid (a token), held (operator "
      "failure), backoff (transient failure), not_connected, no_token "
      "(not asked for yet, or being refreshed)",
      NGX_HTTP_SF_OAUTH_M_STATE, 0, ngx_http_sf_oauth_states },
    { "sf_oauth_api_requests_max_ratio", "gauge", NULL,
      NGX_HTTP_SF_OAUTH_S_ZONE,
      "The highest share of its 24-hour API request limit that the org of "
      "a credential of the zone has used (Sforce-Limit-Info)",
      NGX_HTTP_SF_OAUTH_M_API_RATIO, 0, NULL },
    { "sf_oauth_token_request_duration_seconds", "histogram", NULL,
      NGX_HTTP_SF_OAUTH_S_BOTH,
      "How long token requests took",
      NGX_HTTP_SF_OAUTH_M_HISTOGRAM, 0, NULL },

    { NULL, NULL, NULL, 0, NULL, 0, 0, NULL }
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


/*
 * sf_oauth_info?format=prometheus: a series per credential, or with
 * &scope=zone, the same counters summed per zone and the credentials
 * counted by state, for fleets of many credentials
 */

ngx_int_t
ngx_http_sf_oauth_metrics_handler(ngx_http_request_t *r)
{
    u_char                         *p, *last;
    time_t                          now;
    ngx_buf_t                      *b;
    ngx_str_t                      *zone_name;
    ngx_uint_t                      i, n, f, scope, nzones;
    ngx_shm_zone_t                **shm_zone;
    ngx_http_sf_oauth_zone_t       *zone;
    ngx_http_sf_oauth_node_t       *nodes;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_sf_oauth_metric_t     *m;
    ngx_http_sf_oauth_values_t      vals, *zv;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    if (ngx_http_sf_oauth_metrics_scope(r, &scope) != NGX_OK) {
        return ngx_http_sf_oauth_metrics_refuse(r);
    }

    smcf = ngx_http_get_module_main_conf(r, ngx_http_sf_oauth_module);
    cred = smcf->creds.elts;
    n = smcf->creds.nelts;
    shm_zone = smcf->zones.elts;
    nzones = smcf->zones.nelts;
    now = ngx_time();

    /* this worker's own counts first, then a copy of each record */

    ngx_http_sf_oauth_metrics_flush_all((ngx_cycle_t *) ngx_cycle);

    nodes = NULL;
    zv = NULL;

    if (scope == NGX_HTTP_SF_OAUTH_S_ZONE) {
        if (ngx_http_sf_oauth_metrics_zones(r, smcf, &zv) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        b = ngx_create_temp_buf(r->pool,
                                ngx_http_sf_oauth_metrics_len(scope, nzones));

    } else {
        nodes = ngx_palloc(r->pool,
                           ngx_max(n, 1) * sizeof(ngx_http_sf_oauth_node_t));
        if (nodes == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        for (i = 0; i < n; i++) {
            ngx_http_sf_oauth_store_snapshot(cred[i], &nodes[i]);
        }

        b = ngx_create_temp_buf(r->pool,
                                ngx_http_sf_oauth_metrics_len(scope, n));
    }

    if (b == NULL) {
        goto failed;
    }

    p = b->last;
    last = b->end;

    /* a metric's samples together, after its HELP and TYPE */

    for (m = ngx_http_sf_oauth_metrics, f = 0; m->name; m++, f++) {

        if (!(m->scopes & scope)) {
            continue;
        }

        p = ngx_http_sf_oauth_metrics_head(p, last, m);

        if (scope == NGX_HTTP_SF_OAUTH_S_ZONE) {
            for (i = 0; i < nzones; i++) {
                zone = shm_zone[i]->data;
                p = ngx_http_sf_oauth_metrics_samples(p, last, m, NULL,
                                      &zone->name,
                                      &zv[i * NGX_HTTP_SF_OAUTH_NMETRICS + f]);
            }

            continue;
        }

        for (i = 0; i < n; i++) {
            zone_name = &((ngx_http_sf_oauth_zone_t *)
                          cred[i]->shm_zone->data)->name;

            ngx_http_sf_oauth_metrics_read(m, cred[i], &nodes[i], now, &vals);
            p = ngx_http_sf_oauth_metrics_samples(p, last, m, &cred[i]->name,
                                                  zone_name, &vals);
        }
    }

    b->last = p;

    if (nodes) {
        ngx_explicit_memzero(nodes, n * sizeof(ngx_http_sf_oauth_node_t));
    }

    return ngx_http_sf_oauth_send(r, NGX_HTTP_OK,
                                  "text/plain; version=0.0.4; charset=utf-8",
                                  b);

failed:

    if (nodes) {
        ngx_explicit_memzero(nodes, n * sizeof(ngx_http_sf_oauth_node_t));
    }

    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/* &scope=: credential (the default) or zone; NGX_DECLINED: another */

static ngx_int_t
ngx_http_sf_oauth_metrics_scope(ngx_http_request_t *r, ngx_uint_t *scope)
{
    ngx_str_t  value;

    *scope = NGX_HTTP_SF_OAUTH_S_CREDENTIAL;

    if (ngx_http_arg(r, (u_char *) "scope", sizeof("scope") - 1, &value)
        != NGX_OK)
    {
        return NGX_OK;
    }

    if (value.len == sizeof("credential") - 1
        && ngx_strncmp(value.data, "credential", value.len) == 0)
    {
        return NGX_OK;
    }

    if (value.len == sizeof("zone") - 1
        && ngx_strncmp(value.data, "zone", value.len) == 0)
    {
        *scope = NGX_HTTP_SF_OAUTH_S_ZONE;
        return NGX_OK;
    }

    return NGX_DECLINED;
}


/* an unknown scope: a 400 that names the values allowed */

static ngx_int_t
ngx_http_sf_oauth_metrics_refuse(ngx_http_request_t *r)
{
    ngx_buf_t  *b;

    static u_char  refused[] =
        "sf_oauth_info: unknown scope: use scope=credential (a series per "
        "credential, the default) or scope=zone (summed per zone)\n";

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = refused;
    b->last = refused + sizeof(refused) - 1;
    b->memory = 1;

    return ngx_http_sf_oauth_send(r, NGX_HTTP_BAD_REQUEST,
                                  "text/plain; charset=utf-8", b);
}


/*
 * The values of every metric summed per zone, zone by zone in the order
 * of smcf->zones: zv[zone * NGX_HTTP_SF_OAUTH_NMETRICS + metric].  One
 * record is copied at a time.
 */

static ngx_int_t
ngx_http_sf_oauth_metrics_zones(ngx_http_request_t *r,
    ngx_http_sf_oauth_main_conf_t *smcf, ngx_http_sf_oauth_values_t **zv)
{
    time_t                       now;
    ngx_uint_t                   i, z, f;
    ngx_shm_zone_t             **shm_zone;
    ngx_http_sf_oauth_cred_t   **cred;
    ngx_http_sf_oauth_node_t    *node;
    ngx_http_sf_oauth_metric_t  *m;
    ngx_http_sf_oauth_values_t   vals, *sum;

    cred = smcf->creds.elts;
    shm_zone = smcf->zones.elts;
    now = ngx_time();

    sum = ngx_pcalloc(r->pool, ngx_max(smcf->zones.nelts, 1)
                               * NGX_HTTP_SF_OAUTH_NMETRICS
                               * sizeof(ngx_http_sf_oauth_values_t));
    node = ngx_palloc(r->pool, sizeof(ngx_http_sf_oauth_node_t));

    if (sum == NULL || node == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < smcf->creds.nelts; i++) {

        for (z = 0; z < smcf->zones.nelts; z++) {
            if (shm_zone[z] == cred[i]->shm_zone) {
                break;
            }
        }

        if (z == smcf->zones.nelts) {
            continue;
        }

        ngx_http_sf_oauth_store_snapshot(cred[i], node);

        for (m = ngx_http_sf_oauth_metrics, f = 0; m->name; m++, f++) {
            if (m->scopes & NGX_HTTP_SF_OAUTH_S_ZONE) {
                ngx_http_sf_oauth_metrics_read(m, cred[i], node, now, &vals);
                ngx_http_sf_oauth_metrics_add(m,
                                  &sum[z * NGX_HTTP_SF_OAUTH_NMETRICS + f],
                                  &vals);
            }
        }
    }

    ngx_explicit_memzero(node, sizeof(ngx_http_sf_oauth_node_t));

    *zv = sum;

    return NGX_OK;
}


/* the output's size at most, for "units" credentials or zones */

static size_t
ngx_http_sf_oauth_metrics_len(ngx_uint_t scope, ngx_uint_t units)
{
    size_t                       len;
    ngx_uint_t                   lines;
    ngx_http_sf_oauth_label_t   *l;
    ngx_http_sf_oauth_metric_t  *m;

    len = 0;

    for (m = ngx_http_sf_oauth_metrics; m->name; m++) {

        if (!(m->scopes & scope)) {
            continue;
        }

        len += sizeof("# HELP  \n# TYPE  \n") + 2 * ngx_strlen(m->name)
               + ngx_strlen(m->help) + ngx_strlen(m->type);

        if (m->read == NGX_HTTP_SF_OAUTH_M_HISTOGRAM) {
            lines = NGX_HTTP_SF_OAUTH_BUCKETS + 3;

        } else if (m->values) {
            for (lines = 0, l = m->values; l->value; l++) {
                lines++;
            }

        } else {
            lines = 1;
        }

        /* a sample: its name, labels (escaped at worst) and a number */

        len += units * lines
               * (ngx_strlen(m->name)
                  + sizeof("_bucket{credential=\"\",zone=\"\",=\"\"} .\n")
                  + (m->label ? ngx_strlen(m->label) : sizeof("le"))
                  + NGX_HTTP_SF_OAUTH_VALUE_MAX
                  + 2 * NGX_HTTP_SF_OAUTH_NAME_MAX
                  + 2 * NGX_HTTP_SF_OAUTH_ZONE_NAME_MAX
                  + 2 * NGX_INT64_LEN);
    }

    return len;
}


/* a metric's values in a record: vals->set[i] 0, no sample */

static void
ngx_http_sf_oauth_metrics_read(ngx_http_sf_oauth_metric_t *m,
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_node_t *node,
    time_t now, ngx_http_sf_oauth_values_t *vals)
{
    ngx_uint_t      i;
    ngx_msec_int_t  left;

    ngx_memzero(vals, sizeof(ngx_http_sf_oauth_values_t));

    switch (m->read) {

    case NGX_HTTP_SF_OAUTH_M_FIELD:
        if (m->values == NULL) {
            vals->v[0] = *(ngx_uint_t *) ((u_char *) node + m->offset);
            vals->set[0] = 1;
            return;
        }

        for (i = 0; m->values[i].value; i++) {
            vals->v[i] = *(ngx_uint_t *) ((u_char *) node
                                          + m->values[i].offset);
            vals->set[i] = 1;
        }

        return;

    case NGX_HTTP_SF_OAUTH_M_VALID:
        vals->v[0] = (node->state == NGX_HTTP_SF_OAUTH_VALID);
        vals->set[0] = 1;
        return;

    case NGX_HTTP_SF_OAUTH_M_AGE:
        if (node->state != NGX_HTTP_SF_OAUTH_VALID || node->token_time == 0) {
            /* no token: no sample, rather than a made-up age */
            return;
        }

        vals->v[0] = (now > node->token_time) ? now - node->token_time : 0;
        vals->set[0] = 1;
        return;

    case NGX_HTTP_SF_OAUTH_M_BACKOFF:
        left = node->backoff_until - ngx_current_msec;
        vals->v[0] = (node->state == NGX_HTTP_SF_OAUTH_FAILED && left > 0)
                     ? (left + 999) / 1000 : 0;
        vals->set[0] = 1;
        return;

    case NGX_HTTP_SF_OAUTH_M_HELD:
        /* a credential not connected is held until a connection */
        vals->v[0] = (node->state == NGX_HTTP_SF_OAUTH_FAILED && node->held)
                     || ngx_http_sf_oauth_store_not_connected(cred, node);
        vals->set[0] = 1;
        return;

    case NGX_HTTP_SF_OAUTH_M_API:
        if (node->api_limit == 0) {
            /* Salesforce has not said yet */
            return;
        }

        vals->v[0] = *(ngx_uint_t *) ((u_char *) node + m->offset);
        vals->set[0] = 1;
        return;

    case NGX_HTTP_SF_OAUTH_M_API_RATIO:
        if (node->api_limit == 0) {
            return;
        }

        vals->v[0] = (uint64_t) node->api_used * 10000 / node->api_limit;
        vals->set[0] = 1;
        return;

    case NGX_HTTP_SF_OAUTH_M_STATE:
        for (i = 0; m->values[i].value; i++) {
            vals->set[i] = 1;
        }

        vals->v[ngx_http_sf_oauth_metrics_state(cred, node)] = 1;
        return;

    case NGX_HTTP_SF_OAUTH_M_HISTOGRAM:
        for (i = 0; i < NGX_HTTP_SF_OAUTH_BUCKETS; i++) {
            vals->v[i] = node->duration_bucket[i];
        }

        vals->v[NGX_HTTP_SF_OAUTH_SUM] = node->duration_sum;
        vals->v[NGX_HTTP_SF_OAUTH_COUNT] = node->duration_count;

        for (i = 0; i < NGX_HTTP_SF_OAUTH_SLOTS; i++) {
            vals->set[i] = 1;
        }

        return;
    }
}


/* one state a credential is in, for sf_oauth_credentials{state=...} */

static ngx_uint_t
ngx_http_sf_oauth_metrics_state(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node)
{
    if (node->state == NGX_HTTP_SF_OAUTH_VALID) {
        return NGX_HTTP_SF_OAUTH_C_VALID;
    }

    if (ngx_http_sf_oauth_store_not_connected(cred, node)) {
        return NGX_HTTP_SF_OAUTH_C_NOT_CONN;
    }

    if (node->state == NGX_HTTP_SF_OAUTH_FAILED) {
        return node->held ? NGX_HTTP_SF_OAUTH_C_HELD
                          : NGX_HTTP_SF_OAUTH_C_BACKOFF;
    }

    return NGX_HTTP_SF_OAUTH_C_NO_TOKEN;
}


/* a credential's values into its zone's: summed, or the highest ratio */

static void
ngx_http_sf_oauth_metrics_add(ngx_http_sf_oauth_metric_t *m,
    ngx_http_sf_oauth_values_t *sum, ngx_http_sf_oauth_values_t *vals)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_SF_OAUTH_SLOTS; i++) {

        if (!vals->set[i]) {
            continue;
        }

        if (m->read == NGX_HTTP_SF_OAUTH_M_API_RATIO) {
            sum->v[i] = ngx_max(sum->v[i], vals->v[i]);

        } else {
            sum->v[i] += vals->v[i];
        }

        sum->set[i] = 1;
    }
}


/* a credential's samples of a metric, or a zone's ("cred" NULL) */

static u_char *
ngx_http_sf_oauth_metrics_samples(u_char *p, u_char *last,
    ngx_http_sf_oauth_metric_t *m, ngx_str_t *cred, ngx_str_t *zone,
    ngx_http_sf_oauth_values_t *vals)
{
    ngx_uint_t  i;

    if (m->read == NGX_HTTP_SF_OAUTH_M_HISTOGRAM) {
        return ngx_http_sf_oauth_metrics_histogram(p, last, m, cred, zone,
                                                   vals);
    }

    if (m->values == NULL) {
        if (!vals->set[0]) {
            return p;
        }

        p = ngx_slprintf(p, last, "%s", m->name);
        p = ngx_http_sf_oauth_metrics_labels(p, last, cred, zone);

        if (m->read == NGX_HTTP_SF_OAUTH_M_API_RATIO) {
            return ngx_slprintf(p, last, "} %ui.%04ui\n",
                                vals->v[0] / 10000, vals->v[0] % 10000);
        }

        return ngx_slprintf(p, last, "} %ui\n", vals->v[0]);
    }

    for (i = 0; m->values[i].value; i++) {
        if (!vals->set[i]) {
            continue;
        }

        p = ngx_slprintf(p, last, "%s", m->name);
        p = ngx_http_sf_oauth_metrics_labels(p, last, cred, zone);
        p = ngx_slprintf(p, last, ",%s=\"%s\"} %ui\n", m->label,
                         m->values[i].value, vals->v[i]);
    }

    return p;
}


/* a histogram's cumulative buckets, its sum and its count */

static u_char *
ngx_http_sf_oauth_metrics_histogram(u_char *p, u_char *last,
    ngx_http_sf_oauth_metric_t *m, ngx_str_t *cred, ngx_str_t *zone,
    ngx_http_sf_oauth_values_t *vals)
{
    ngx_uint_t  j, cum, count;

    cum = 0;
    count = vals->v[NGX_HTTP_SF_OAUTH_COUNT];

    for (j = 0; j < NGX_HTTP_SF_OAUTH_BUCKETS; j++) {
        cum += vals->v[j];
        p = ngx_slprintf(p, last, "%s_bucket", m->name);
        p = ngx_http_sf_oauth_metrics_labels(p, last, cred, zone);
        p = ngx_slprintf(p, last, ",le=\"%s\"} %ui\n",
                         ngx_http_sf_oauth_le[j], cum);
    }

    p = ngx_slprintf(p, last, "%s_bucket", m->name);
    p = ngx_http_sf_oauth_metrics_labels(p, last, cred, zone);
    p = ngx_slprintf(p, last, ",le=\"+Inf\"} %ui\n", count);

    /* the sum is in ms */

    p = ngx_slprintf(p, last, "%s_sum", m->name);
    p = ngx_http_sf_oauth_metrics_labels(p, last, cred, zone);
    p = ngx_slprintf(p, last, "} %ui.%03ui\n",
                     vals->v[NGX_HTTP_SF_OAUTH_SUM] / 1000,
                     vals->v[NGX_HTTP_SF_OAUTH_SUM] % 1000);

    p = ngx_slprintf(p, last, "%s_count", m->name);
    p = ngx_http_sf_oauth_metrics_labels(p, last, cred, zone);

    return ngx_slprintf(p, last, "} %ui\n", count);
}


static u_char *
ngx_http_sf_oauth_metrics_head(u_char *p, u_char *last,
    ngx_http_sf_oauth_metric_t *m)
{
    return ngx_slprintf(p, last, "# HELP %s %s\n# TYPE %s %s\n",
                        m->name, m->help, m->name, m->type);
}


/*
 * {credential="...",zone="..." or, for a zone's sum, {zone="..." — the
 * caller closes it.  The names' own characters need no escape (letters,
 * digits, "_", "-", "."), but a label value is escaped all the same.
 */

static u_char *
ngx_http_sf_oauth_metrics_labels(u_char *p, u_char *last, ngx_str_t *cred,
    ngx_str_t *zone)
{
    ngx_uint_t   i, k;
    ngx_str_t   *s;

    for (k = (cred == NULL); k < 2; k++) {
        s = (k == 0) ? cred : zone;

        p = ngx_slprintf(p, last, k == 0 ? "{credential=\"" :
                                  (cred ? ",zone=\"" : "{zone=\""));

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
