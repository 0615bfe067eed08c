
/*
 * The token store: one record per credential in an nginx shared memory
 * zone, so that every worker uses one access token and one refresh.
 *
 * A record holds the access token and its generation, the current refresh
 * token (Salesforce may rotate it), the refresh lease (owner pid and
 * deadline), the last error and the backoff.  Records are keyed by the
 * credential name, so a reload maps them back; a fingerprint of the
 * credential's configuration drops a token that a changed configuration
 * no longer vouches for.
 */


#include <openssl/evp.h>

#include "ngx_http_sf_oauth.h"


static ngx_int_t ngx_http_sf_oauth_store_attach(ngx_http_sf_oauth_zone_t *zone,
    ngx_http_sf_oauth_cred_t *cred);
static void ngx_http_sf_oauth_store_reset(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node);
static ngx_int_t ngx_http_sf_oauth_lease_free(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node);
static ngx_int_t ngx_http_sf_oauth_take_lease(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node, ngx_pool_t *pool, ngx_str_t *dst,
    u_char *secret, size_t len);
static ngx_int_t ngx_http_sf_oauth_store_refresh_ahead(
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_node_t *node,
    ngx_pool_t *pool, ngx_http_sf_oauth_lookup_t *lk);
static ngx_int_t ngx_http_sf_oauth_store_introspect(
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_node_t *node,
    ngx_pool_t *pool, ngx_http_sf_oauth_lookup_t *lk, ngx_msec_t *next);
static ngx_msec_t ngx_http_sf_oauth_backoff(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t failures, ngx_uint_t error_class);


ngx_int_t
ngx_http_sf_oauth_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_sf_oauth_zone_t  *ozone = data;

    size_t                     len;
    ngx_uint_t                 i, fresh;
    ngx_http_sf_oauth_zone_t  *zone;
    ngx_http_sf_oauth_cred_t **cred;

    zone = shm_zone->data;
    fresh = 0;

    if (ozone) {
        /* a reload: keep the records, attach the new credentials to them */
        zone->sh = ozone->sh;
        zone->shpool = ozone->shpool;

    } else {
        zone->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

        if (shm_zone->shm.exists) {
            zone->sh = zone->shpool->data;

        } else {
            fresh = 1;

            zone->sh = ngx_slab_calloc(zone->shpool,
                                       sizeof(ngx_http_sf_oauth_sh_t));
            if (zone->sh == NULL) {
                goto too_small;
            }

            zone->shpool->data = zone->sh;
            ngx_queue_init(&zone->sh->nodes);

            len = sizeof(" in sf_oauth_zone \"\"") + shm_zone->shm.name.len;

            zone->shpool->log_ctx = ngx_slab_alloc(zone->shpool, len);
            if (zone->shpool->log_ctx == NULL) {
                goto too_small;
            }

            ngx_sprintf(zone->shpool->log_ctx, " in sf_oauth_zone \"%V\"%Z",
                        &shm_zone->shm.name);
        }
    }

    /* running out of room is reported below, with the way out */
    zone->shpool->log_nomem = 0;

    cred = zone->creds.elts;

    for (i = 0; i < zone->creds.nelts; i++) {
        if (ngx_http_sf_oauth_store_attach(zone, cred[i]) != NGX_OK) {
            goto too_small;
        }
    }

    /* a new zone, at start: the tokens from the state file, if any */

    if (fresh && zone->state.len) {
        ngx_shmtx_lock(&zone->shpool->mutex);
        ngx_http_sf_oauth_state_load(zone, shm_zone->shm.log);
        ngx_shmtx_unlock(&zone->shpool->mutex);
    }

    return NGX_OK;

too_small:

    ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                  "sf_oauth_zone \"%V\" is too small for %ui credentials "
                  "of about %uz bytes each: give it a larger size",
                  &shm_zone->shm.name, zone->creds.nelts,
                  sizeof(ngx_http_sf_oauth_node_t));

    return NGX_ERROR;
}


static ngx_int_t
ngx_http_sf_oauth_store_attach(ngx_http_sf_oauth_zone_t *zone,
    ngx_http_sf_oauth_cred_t *cred)
{
    ngx_queue_t               *q;
    ngx_http_sf_oauth_node_t  *node;

    ngx_shmtx_lock(&zone->shpool->mutex);

    for (q = ngx_queue_head(&zone->sh->nodes);
         q != ngx_queue_sentinel(&zone->sh->nodes);
         q = ngx_queue_next(q))
    {
        node = ngx_queue_data(q, ngx_http_sf_oauth_node_t, queue);

        if (node->name_len == cred->name.len
            && ngx_memcmp(node->name, cred->name.data, cred->name.len) == 0)
        {
            if (node->conf_fp != cred->conf_fp) {
                ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                              "sf_oauth: credential \"%V\" changed its "
                              "token_url, client_id or refresh token: "
                              "its cached token is dropped", &cred->name);

                ngx_http_sf_oauth_store_reset(cred, node);
            }

            cred->node = node;
            ngx_shmtx_unlock(&zone->shpool->mutex);
            return NGX_OK;
        }
    }

    node = ngx_slab_calloc_locked(zone->shpool,
                                  sizeof(ngx_http_sf_oauth_node_t));
    if (node == NULL) {
        ngx_shmtx_unlock(&zone->shpool->mutex);
        return NGX_ERROR;
    }

    node->name_len = cred->name.len;
    ngx_memcpy(node->name, cred->name.data, cred->name.len);

    ngx_http_sf_oauth_store_reset(cred, node);

    ngx_queue_insert_tail(&zone->sh->nodes, &node->queue);

    cred->node = node;

    ngx_shmtx_unlock(&zone->shpool->mutex);

    return NGX_OK;
}


static void
ngx_http_sf_oauth_store_reset(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node)
{
    node->conf_fp = cred->conf_fp;
    node->state = NGX_HTTP_SF_OAUTH_EMPTY;
    node->generation++;
    node->token_len = 0;
    node->url_len = 0;
    node->error_len = 0;
    node->failures = 0;
    node->backoff_until = 0;
    node->issued_at = 0;

    /* a lease of an old worker is left alone: its answer is discarded */

    ngx_explicit_memzero(node->token, sizeof(node->token));
    ngx_explicit_memzero(node->refresh, sizeof(node->refresh));

    node->refresh_len = cred->refresh_token.len;
    ngx_memcpy(node->refresh, cred->refresh_token.data,
               cred->refresh_token.len);
}


/*
 * The lookup of every request.  With a valid token it copies
 * "Bearer <token>" into the request pool, after the request's ctx when the
 * caller asks for one: that one allocation is the whole cost of the hot
 * path.  Otherwise it tells the caller to fail, to wait, or to
 * start the refresh itself under a lease.
 */

ngx_int_t
ngx_http_sf_oauth_store_lookup(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_http_sf_oauth_lookup_t *lk)
{
    u_char                    *p;
    ngx_int_t                  rc;
    ngx_msec_t                 now;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    lk->ctx = NULL;

    if (node->state == NGX_HTTP_SF_OAUTH_VALID) {

        lk->authorization.len = sizeof("Bearer ") - 1 + node->token_len;

        p = ngx_palloc(pool, lk->ctx_size + lk->authorization.len);
        if (p == NULL) {
            ngx_shmtx_unlock(&shpool->mutex);
            return NGX_ERROR;
        }

        if (lk->ctx_size) {
            ngx_memzero(p, lk->ctx_size);
            lk->ctx = p;
            p += lk->ctx_size;
        }

        lk->authorization.data = p;
        p = ngx_cpymem(p, "Bearer ", sizeof("Bearer ") - 1);
        ngx_memcpy(p, node->token, node->token_len);

        lk->generation = node->generation;
        node->last_use = ngx_current_msec;

        if (cred->seen_generation != node->generation) {
            cred->seen_generation = node->generation;
            ngx_http_sf_oauth_redact_remember(cred, node->token,
                                              node->token_len);
        }

        ngx_shmtx_unlock(&shpool->mutex);

        return NGX_HTTP_SF_OAUTH_GOT_TOKEN;
    }

    now = ngx_current_msec;

    if (node->state == NGX_HTTP_SF_OAUTH_FAILED
        && (ngx_msec_int_t) (node->backoff_until - now) > 0)
    {
        lk->error.len = node->error_len;
        lk->error.data = ngx_pnalloc(pool, node->error_len);
        if (lk->error.data == NULL) {
            ngx_shmtx_unlock(&shpool->mutex);
            return NGX_ERROR;
        }

        ngx_memcpy(lk->error.data, node->error, node->error_len);
        lk->retry_after = (node->backoff_until - now + 999) / 1000;

        ngx_shmtx_unlock(&shpool->mutex);

        return NGX_HTTP_SF_OAUTH_GOT_ERROR;
    }

    if (!ngx_http_sf_oauth_lease_free(cred, node)) {
        ngx_shmtx_unlock(&shpool->mutex);
        return NGX_HTTP_SF_OAUTH_GOT_WAIT;
    }

    /* take the lease: this worker makes the token request */

    if (node->lease_pid && node->lease_pid != ngx_pid) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": taking over the token "
                      "refresh of process %P", &cred->name, node->lease_pid);
    }

    rc = ngx_http_sf_oauth_take_lease(cred, node, pool, &lk->refresh_token,
                                      node->refresh, node->refresh_len);
    if (rc == NGX_HTTP_SF_OAUTH_GOT_LEASE) {
        node->token_requests++;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return rc;
}


/*
 * With the zone locked: the lease for this worker, and a copy of the
 * secret its request sends (the refresh token, or the access token to
 * introspect) in the caller's pool.
 */

static ngx_int_t
ngx_http_sf_oauth_take_lease(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node, ngx_pool_t *pool, ngx_str_t *dst,
    u_char *secret, size_t len)
{
    dst->data = ngx_pnalloc(pool, len);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(dst->data, secret, len);
    dst->len = len;

    node->lease_pid = ngx_pid;
    node->lease_deadline = ngx_current_msec + cred->timeout
                           + NGX_HTTP_SF_OAUTH_LEASE_SLACK;

    return NGX_HTTP_SF_OAUTH_GOT_LEASE;
}


/*
 * Whether the refresh lease may be taken, with the zone locked: nobody
 * holds it, or its holder is past its deadline or gone.  A lease of this
 * very process without a transfer in flight is stale too: a worker that
 * reused a dead worker's pid.
 */

static ngx_int_t
ngx_http_sf_oauth_lease_free(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node)
{
    if (node->lease_pid == 0) {
        return 1;
    }

    if (cred->transfer) {
        /* this worker's own request is still in flight */
        return 0;
    }

    if (node->lease_pid == ngx_pid) {
        return 1;
    }

    if ((ngx_msec_int_t) (node->lease_deadline - ngx_current_msec) <= 0) {
        return 1;
    }

    if (kill(node->lease_pid, 0) == -1 && ngx_errno == NGX_ESRCH) {
        return 1;
    }

    return 0;
}


/* stores the outcome of this worker's token request and drops its lease */

void
ngx_http_sf_oauth_store_result(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_token_t *tok)
{
    ngx_msec_t                 delay;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (node->lease_pid == ngx_pid) {
        node->lease_pid = 0;
    }

    if (node->conf_fp != cred->conf_fp) {
        /* a reload changed the credential meanwhile: the answer is stale */
        ngx_shmtx_unlock(&shpool->mutex);
        return;
    }

    if (tok->ok) {
        node->state = NGX_HTTP_SF_OAUTH_VALID;
        node->generation++;

        node->token_len = tok->access_token.len;
        ngx_memcpy(node->token, tok->access_token.data, node->token_len);
        ngx_http_sf_oauth_fingerprint(node->token_fp, node->token,
                                      node->token_len);

        node->url_len = tok->instance_url.len;
        ngx_memcpy(node->instance_url, tok->instance_url.data, node->url_len);

        if (tok->refresh_token.len) {
            ngx_explicit_memzero(node->refresh, sizeof(node->refresh));
            node->refresh_len = tok->refresh_token.len;
            ngx_memcpy(node->refresh, tok->refresh_token.data,
                       node->refresh_len);
        }

        node->issued_at = tok->issued_at;
        node->token_time = ngx_time();
        node->token_msec = ngx_current_msec;
        node->failures = 0;
        node->backoff_until = 0;

        /* the last error stays, for the status output */

        ngx_shmtx_unlock(&shpool->mutex);
        return;
    }

    node->token_failures++;
    node->failures++;
    node->error_time = ngx_time();

    node->error_len = ngx_min(tok->error.len, NGX_HTTP_SF_OAUTH_ERROR_MAX);
    ngx_memcpy(node->error, tok->error.data, node->error_len);

    if (node->state != NGX_HTTP_SF_OAUTH_VALID) {
        delay = ngx_http_sf_oauth_backoff(cred, node->failures,
                                          tok->error_class);

        node->state = NGX_HTTP_SF_OAUTH_FAILED;
        node->backoff_until = ngx_current_msec + delay;
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/*
 * Salesforce answered 401 to the token of "generation".  The rule that
 * keeps a 401 from becoming a refresh storm is scoped to the token:
 *
 *   - a newer token is there already: the request is replayed with it,
 *     and nothing is refreshed (NGX_HTTP_SF_OAUTH_REJ_NEWER);
 *   - it is the current token: it is dropped and a refresh follows
 *     (NGX_HTTP_SF_OAUTH_REJ_DROPPED), unless the last tokens that a 401
 *     made us get were rejected too when their requests were replayed.
 *     Then each further 401 refresh waits a growing interval after the
 *     last one (1 s, 2 s, 4 s, up to NGX_HTTP_SF_OAUTH_REJECT_MAX), and
 *     the caller is told when to ask again (NGX_HTTP_SF_OAUTH_REJ_LATER,
 *     *until).  A replay that succeeds resets the interval.
 *
 * So an endpoint that no refresh cures costs a few token requests a
 * minute, and a real revocation is cured by the first 401 after it.
 */

ngx_int_t
ngx_http_sf_oauth_store_rejected(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, ngx_msec_t *until)
{
    u_char                     fp[NGX_HTTP_SF_OAUTH_FP_LEN];
    ngx_int_t                  rc;
    ngx_uint_t                 dropped;
    ngx_msec_t                 now, wait;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;
    now = ngx_current_msec;
    dropped = 0;

    ngx_shmtx_lock(&shpool->mutex);

    if (node->state != NGX_HTTP_SF_OAUTH_VALID) {
        /* dropped already, or refreshing, or failed: the lookup tells */
        rc = NGX_HTTP_SF_OAUTH_REJ_DROPPED;

    } else if (node->generation != generation) {
        rc = NGX_HTTP_SF_OAUTH_REJ_NEWER;

    } else {
        wait = 0;

        if (node->uncured) {
            wait = (ngx_msec_t) NGX_HTTP_SF_OAUTH_REJECT_MIN
                   << ngx_min(node->uncured - 1, 8);
            wait = ngx_min(wait, NGX_HTTP_SF_OAUTH_REJECT_MAX);
        }

        if (wait && (ngx_msec_int_t) (node->rejected_at + wait - now) > 0) {
            *until = node->rejected_at + wait;
            rc = NGX_HTTP_SF_OAUTH_REJ_LATER;

        } else {
            node->state = NGX_HTTP_SF_OAUTH_EMPTY;
            node->invalidations++;
            node->rejected_at = now;
            ngx_memcpy(fp, node->token_fp, NGX_HTTP_SF_OAUTH_FP_LEN);
            dropped = 1;
            rc = NGX_HTTP_SF_OAUTH_REJ_DROPPED;
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);

    if (dropped) {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": Salesforce rejected "
                      "access token fp:%*s with 401, refreshing",
                      &cred->name, (size_t) NGX_HTTP_SF_OAUTH_FP_LEN, fp);
    }

    return rc;
}


/*
 * The answer to a request replayed after a 401 with the token of
 * "generation": "cured" if it was not a 401 again.  Counted once per
 * token, so that many replays of one refresh count as one.
 */

void
ngx_http_sf_oauth_store_replayed(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, ngx_uint_t cured, ngx_log_t *log)
{
    ngx_uint_t                 first;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->node;

    if (cured && node->uncured == 0) {
        /* the usual case, read without the lock: nothing to reset */
        return;
    }

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;
    first = 0;

    ngx_shmtx_lock(&shpool->mutex);

    if (cured) {
        node->uncured = 0;
        node->uncured_generation = 0;

    } else if (node->uncured_generation != generation) {
        node->uncured_generation = generation;
        first = (node->uncured++ == 0);
    }

    ngx_shmtx_unlock(&shpool->mutex);

    if (first) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "sf_oauth: credential \"%V\": Salesforce answered 401 "
                      "to a request replayed with a new token: a refresh "
                      "does not cure this 401 (API access, IP restriction "
                      "or session security level of the user?); further "
                      "401 refreshes wait %M s, growing to %M s, until a "
                      "replay succeeds", &cred->name,
                      (ngx_msec_t) NGX_HTTP_SF_OAUTH_REJECT_MIN / 1000,
                      (ngx_msec_t) NGX_HTTP_SF_OAUTH_REJECT_MAX / 1000);
    }
}


/* a request held for a replay, for the status output */

void
ngx_http_sf_oauth_store_count_replay(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);
    cred->node->replays++;
    ngx_shmtx_unlock(&shpool->mutex);
}


/*
 * The refresh ahead of expiry, from a timer.  Salesforce's session timeout
 * slides with each use, so a token is estimated to expire "lifetime" after
 * its last use (or after it was got, if later).  When that is less than
 * "refresh_ahead" away and nobody refreshes, this worker takes the lease.
 * *next says when to look again.
 */

ngx_int_t
ngx_http_sf_oauth_store_ahead(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_http_sf_oauth_lookup_t *lk, ngx_msec_t *next)
{
    ngx_int_t                  rc;
    ngx_msec_t                 now, due;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;
    now = ngx_current_msec;

    ngx_shmtx_lock(&shpool->mutex);

    if (node->state != NGX_HTTP_SF_OAUTH_VALID) {
        /* no token to keep fresh: requests will get one */
        *next = cred->refresh_ahead;
        rc = NGX_DECLINED;

    } else if (cred->introspect) {
        rc = ngx_http_sf_oauth_store_introspect(cred, node, pool, lk, next);

    } else {
        due = ((ngx_msec_int_t) (node->last_use - node->token_msec) > 0
               ? node->last_use : node->token_msec)
              + cred->lifetime - cred->refresh_ahead;

        if ((ngx_msec_int_t) (due - now) > 0) {
            *next = due - now;
            rc = NGX_DECLINED;

        } else {
            *next = cred->refresh_ahead;
            rc = ngx_http_sf_oauth_lease_free(cred, node)
                 ? ngx_http_sf_oauth_store_refresh_ahead(cred, node, pool, lk)
                 : NGX_DECLINED;
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return rc;
}


/* with the zone locked: the lease, for a refresh in the background */

static ngx_int_t
ngx_http_sf_oauth_store_refresh_ahead(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node, ngx_pool_t *pool,
    ngx_http_sf_oauth_lookup_t *lk)
{
    ngx_int_t  rc;

    lk->introspect = 0;

    rc = ngx_http_sf_oauth_take_lease(cred, node, pool, &lk->refresh_token,
                                      node->refresh, node->refresh_len);

    if (rc == NGX_HTTP_SF_OAUTH_GOT_LEASE) {
        node->token_requests++;
        node->ahead_refreshes++;
    }

    return rc;
}


/*
 * With "introspect on", with the zone locked: the token's expiry as
 * Salesforce last said it.  When it is unknown for this token, or less
 * than refresh_ahead away (it may have slid since), the lease is taken to
 * ask again.
 */

static ngx_int_t
ngx_http_sf_oauth_store_introspect(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node, ngx_pool_t *pool,
    ngx_http_sf_oauth_lookup_t *lk, ngx_msec_t *next)
{
    ngx_int_t       rc;
    ngx_msec_int_t  left;

    *next = 1000;

    if (node->exp_generation == node->generation) {
        left = (ngx_msec_int_t) (node->exp - ngx_time()) * 1000
               - (ngx_msec_int_t) cred->refresh_ahead;

        if (left > 0) {
            *next = (ngx_msec_t) left;
            return NGX_DECLINED;
        }
    }

    if (!ngx_http_sf_oauth_lease_free(cred, node)) {
        return NGX_DECLINED;
    }

    lk->introspect = 1;
    lk->generation = node->generation;

    rc = ngx_http_sf_oauth_take_lease(cred, node, pool, &lk->authorization,
                                      node->token, node->token_len);

    if (rc == NGX_HTTP_SF_OAUTH_GOT_LEASE) {
        node->introspections++;
    }

    return rc;
}


/*
 * What introspection said about the token of "generation": its expiry, or
 * that it is gone.  Returns NGX_HTTP_SF_OAUTH_GOT_LEASE, the lease kept,
 * when the token is to be refreshed now.
 */

ngx_int_t
ngx_http_sf_oauth_store_introspected(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, ngx_http_sf_oauth_token_t *tok, ngx_pool_t *pool,
    ngx_http_sf_oauth_lookup_t *lk)
{
    ngx_int_t                  rc;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (node->lease_pid == ngx_pid) {
        node->lease_pid = 0;
    }

    if (node->generation != generation
        || node->state != NGX_HTTP_SF_OAUTH_VALID
        || node->conf_fp != cred->conf_fp)
    {
        /* a newer token came meanwhile */
        ngx_shmtx_unlock(&shpool->mutex);
        return NGX_DECLINED;
    }

    node->exp_generation = generation;

    if (!tok->ok) {
        /* ask again in half a minute */
        node->exp = ngx_time() + cred->refresh_ahead / 1000 + 30;
        ngx_shmtx_unlock(&shpool->mutex);
        return NGX_DECLINED;
    }

    node->exp = tok->exp;

    if (tok->active
        && (ngx_msec_int_t) (tok->exp - ngx_time()) * 1000
           > (ngx_msec_int_t) cred->refresh_ahead)
    {
        ngx_shmtx_unlock(&shpool->mutex);
        return NGX_DECLINED;
    }

    if (!tok->active) {
        node->invalidations++;
    }

    rc = ngx_http_sf_oauth_store_refresh_ahead(cred, node, pool, lk);

    ngx_shmtx_unlock(&shpool->mutex);

    return rc;
}


/* gives up this worker's lease without a result, as on exit */

void
ngx_http_sf_oauth_store_release(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (cred->node->lease_pid == ngx_pid) {
        cred->node->lease_pid = 0;
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/* a copy of the record, for the status output */

void
ngx_http_sf_oauth_store_snapshot(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *copy)
{
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);
    ngx_memcpy(copy, cred->node, sizeof(ngx_http_sf_oauth_node_t));
    ngx_shmtx_unlock(&shpool->mutex);
}


ngx_int_t
ngx_http_sf_oauth_store_instance_url(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_str_t *url)
{
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    url->len = node->url_len;
    url->data = ngx_pnalloc(pool, node->url_len + 1);

    if (url->data) {
        ngx_memcpy(url->data, node->instance_url, node->url_len);
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return url->data ? NGX_OK : NGX_ERROR;
}


/*
 * Exponential backoff with jitter for transient failures; a long hold for
 * failures that only the operator can cure.
 */

static ngx_msec_t
ngx_http_sf_oauth_backoff(ngx_http_sf_oauth_cred_t *cred, ngx_uint_t failures,
    ngx_uint_t error_class)
{
    ngx_msec_t  delay;

    if (error_class == NGX_HTTP_SF_OAUTH_OPERATOR) {
        return cred->hold;
    }

    delay = cred->backoff_min;

    while (--failures && delay < cred->backoff_max) {
        delay *= 2;
    }

    delay = ngx_min(delay, cred->backoff_max);

    /* up to a fifth less, so that many proxies do not retry in step */
    return delay - (ngx_msec_t) ngx_random() % (delay / 5 + 1);
}


/* the first hex digits of the SHA-256 of a secret: safe to log */

void
ngx_http_sf_oauth_fingerprint(u_char *dst, u_char *data, size_t len)
{
    u_char        md[EVP_MAX_MD_SIZE];
    unsigned int  n;

    if (EVP_Digest(data, len, md, &n, EVP_sha256(), NULL) != 1) {
        ngx_memset(dst, '?', NGX_HTTP_SF_OAUTH_FP_LEN);
        return;
    }

    ngx_hex_dump(dst, md, NGX_HTTP_SF_OAUTH_FP_LEN / 2);
}
