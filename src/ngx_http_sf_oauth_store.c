
/*
 * The token store: one record per credential in an nginx shared memory
 * zone, so that every worker uses one access token and one refresh.
 *
 * A record holds the access token and its generation, the current refresh
 * token (Salesforce may rotate it), the refresh lease (owner pid and
 * deadline), the last error and the backoff.  How records are made, kept
 * and dropped across reloads is in ngx_http_sf_oauth_zone.c; what the
 * fleet keeps in them, in ngx_http_sf_oauth_store_fleet.c.
 *
 * This file is one concern, a token's life in its record as the workers
 * see it, though it is over a thousand lines: the lookup, the lease, the
 * result, the 401 rule, the refresh ahead and the introspection all take
 * the lease and read or write the same fields under the same lock, with
 * the same checks (the record still the credential's, the configuration
 * still the record's, the zone not retired), and must be read together to
 * see that two workers never refresh at once.  The accessors at its end
 * (identity, status snapshot, metrics) are small readers and counters of
 * that record, under that lock.
 */


#include "ngx_http_sf_oauth.h"


static ngx_uint_t ngx_http_sf_oauth_store_same_records(
    ngx_http_sf_oauth_node_t *a, ngx_http_sf_oauth_node_t *b);
static ngx_int_t ngx_http_sf_oauth_store_is_retired(
    ngx_http_sf_oauth_cred_t *cred);
static ngx_uint_t ngx_http_sf_oauth_store_carry(
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_node_t *node);
static void ngx_http_sf_oauth_store_forwarded(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node);
static void ngx_http_sf_oauth_store_outcome(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node, ngx_http_sf_oauth_token_t *tok);
static ngx_int_t ngx_http_sf_oauth_store_lease(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node, ngx_pool_t *pool,
    ngx_http_sf_oauth_lookup_t *lk);
static ngx_int_t ngx_http_sf_oauth_take_refresh(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node, ngx_pool_t *pool,
    ngx_http_sf_oauth_lookup_t *lk);
static ngx_int_t ngx_http_sf_oauth_take_lease(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node, ngx_pool_t *pool, ngx_str_t *dst,
    u_char *secret, size_t len);
static ngx_int_t ngx_http_sf_oauth_store_refresh_ahead(
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_node_t *node,
    ngx_pool_t *pool, ngx_http_sf_oauth_lookup_t *lk);
static ngx_int_t ngx_http_sf_oauth_store_introspect(
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_node_t *node,
    ngx_pool_t *pool, ngx_http_sf_oauth_lookup_t *lk, ngx_msec_t *next);
static void ngx_http_sf_oauth_store_count_duration(
    ngx_http_sf_oauth_node_t *node, ngx_msec_t duration);
static ngx_msec_t ngx_http_sf_oauth_backoff(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t failures, ngx_uint_t error_class);


static ngx_str_t  ngx_http_sf_oauth_error_removed =
    ngx_string("the credential was removed by a reload");

static ngx_str_t  ngx_http_sf_oauth_error_retired =
    ngx_string("a reload resized or removed the sf_oauth_zone: this old "
               "worker process starts no token request");

/* an old worker's record with its outcome, copied out of "sf_oauth_carry" */
static ngx_http_sf_oauth_node_t  ngx_http_sf_oauth_store_carried_rec;


/*
 * Whether a record (the zone's, the state file's, the fleet's) was made by
 * this configuration of the credential: NGX_HTTP_SF_OAUTH_SAME_CONF if its
 * conf_fp is the credential's; NGX_HTTP_SF_OAUTH_SAME_RT if only its rt_fp
 * is, a refresh_token credential whose token_url alone changed: its
 * refresh token (rotated, or from a connection), its access token and its
 * generation stay good, for they are the org's whatever endpoint issued
 * them; 0 otherwise (see ngx_http_sf_oauth_fingerprint_conf).
 */

ngx_uint_t
ngx_http_sf_oauth_store_same(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *rec)
{
    if (rec->conf_fp == cred->conf_fp) {
        return NGX_HTTP_SF_OAUTH_SAME_CONF;
    }

    if (cred->rt_fp && rec->rt_fp == cred->rt_fp) {
        return NGX_HTTP_SF_OAUTH_SAME_RT;
    }

    return 0;
}


/*
 * Whether two records, an old worker's and this one's across a reload
 * that moved the record (see ngx_http_sf_oauth_carry.c), are of one
 * configuration of the credential, or of two whose refresh token is the
 * same (token_url alone changed): the old worker's outcome, and its
 * rotated refresh token above all, is this record's.
 */

static ngx_uint_t
ngx_http_sf_oauth_store_same_records(ngx_http_sf_oauth_node_t *a,
    ngx_http_sf_oauth_node_t *b)
{
    return a->conf_fp == b->conf_fp || (a->rt_fp && a->rt_fp == b->rt_fp);
}


/*
 * With the zone locked: whether the credential's record is still its own.
 * A reload drops the records of removed credentials, while workers of the
 * older configuration may still be finishing requests.
 */

ngx_int_t
ngx_http_sf_oauth_store_owns_node(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_http_sf_oauth_node_t  *node;

    node = cred->rt.node;

    return node->name_len == cred->name.len
           && ngx_memcmp(node->name, cred->name.data, cred->name.len) == 0;
}


/*
 * Whether a reload dropped the credential's zone, or moved its record to
 * another zone: see zone_carry_records
 */

static ngx_int_t
ngx_http_sf_oauth_store_is_retired(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;

    return zone->sh->retired || cred->rt.node->moved;
}


/*
 * With the zone locked, in a worker of a configuration whose commit copied
 * into the record the lease of a worker before it (node->carried): that
 * worker never sees this zone, and posts its outcome to the zone
 * "sf_oauth_carry" instead.  The outcome, once there, goes into the record
 * as its own token request's would: a token only over the generation the
 * lease was taken at, with the refresh token it rotated.  With no
 * outcome, the lease stays until it is over (its owner gone, or past its
 * deadline), and then it is taken over as a dead owner's; the outcome is
 * looked for after the owner was seen gone, as the owner posts it before
 * it ends.  Returns 1 while the old lease lasts.
 */

static ngx_uint_t
ngx_http_sf_oauth_store_carry(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node)
{
    ngx_uint_t                 i, over;
    ngx_http_sf_oauth_zone_t  *zone;
    ngx_http_sf_oauth_node_t  *rec;

    if (!node->carried) {
        return 0;
    }

    over = node->lease_pid == 0
           || (ngx_msec_int_t) (node->lease_deadline - ngx_current_msec) <= 0
           || (kill(node->lease_pid, 0) == -1 && ngx_errno == NGX_ESRCH);

    rec = &ngx_http_sf_oauth_store_carried_rec;

    if (node->lease_pid == 0
        || ngx_http_sf_oauth_carry_take(NGX_HTTP_SF_OAUTH_CARRY_OUTCOME,
                                        node, node->lease_pid,
                                        node->lease_deadline, rec, 0)
           != NGX_OK)
    {
        if (!over) {
            return 1;
        }

        node->carried = 0;

        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": the token request of "
                      "process %P, in flight when a reload moved its "
                      "record to this sf_oauth_zone, ended without an "
                      "outcome here: this worker process takes the refresh "
                      "over", &cred->name, node->lease_pid);
        return 0;
    }

    node->carried = 0;
    node->lease_pid = 0;

    if (!ngx_http_sf_oauth_store_same_records(rec, node)) {
        ngx_explicit_memzero(rec, sizeof(ngx_http_sf_oauth_node_t));
        return 0;
    }

    if (rec->token_len && rec->generation > node->generation) {
        ngx_http_sf_oauth_store_set_token(node, NULL, rec);
        node->generation = rec->generation;

        zone = cred->shm_zone->data;

        if (zone->redis_name.len) {
            /* this zone's Redis may be another: the token is written back */
            node->fleet_generation = ngx_max(node->fleet_generation,
                                             rec->fleet_generation);
            node->fleet_dirty = 1;
        }

    } else if (rec->state == NGX_HTTP_SF_OAUTH_FAILED && rec->held
               && node->state != NGX_HTTP_SF_OAUTH_VALID)
    {
        /*
         * The operator's to fix (invalid_grant...): held here too.  A
         * failure that may pass is not carried: the next request here
         * tries again at once, with the same refresh token.
         */
        node->state = NGX_HTTP_SF_OAUTH_FAILED;
        node->error_len = rec->error_len;
        ngx_memcpy(node->error, rec->error, rec->error_len);
        node->error_time = rec->error_time;
        node->failures = rec->failures;
        node->backoff_until = rec->backoff_until;
        node->held = rec->held;
    }

    node->busy = rec->busy;
    node->busy_until = rec->busy_until;

    /* the old worker's counts of its token request, for the metrics */
    node->token_ok = ngx_max(node->token_ok, rec->token_ok);
    node->token_transient = ngx_max(node->token_transient,
                                    rec->token_transient);
    node->token_operator = ngx_max(node->token_operator, rec->token_operator);
    node->token_failures = ngx_max(node->token_failures, rec->token_failures);

    if (rec->duration_count > node->duration_count) {
        node->duration_count = rec->duration_count;
        node->duration_sum = rec->duration_sum;

        for (i = 0; i < NGX_HTTP_SF_OAUTH_BUCKETS; i++) {
            node->duration_bucket[i] = rec->duration_bucket[i];
        }
    }

    ngx_explicit_memzero(rec, sizeof(ngx_http_sf_oauth_node_t));

    ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                  "sf_oauth: credential \"%V\": the outcome (%s) of a token "
                  "request in flight when a reload moved its record to "
                  "this sf_oauth_zone is stored", &cred->name,
                  node->state == NGX_HTTP_SF_OAUTH_VALID ? "a token"
                                                         : "an error");

    return 0;
}


/*
 * With the zone locked, in a worker before a reload that moved the record
 * to another zone, its record without a token: the token that the new
 * workers forwarded to the zone "sf_oauth_carry" (store_relay), if it is
 * newer than the record's.  The record's refresh token becomes theirs,
 * though this worker never sends it: no token request starts here.
 */

static void
ngx_http_sf_oauth_store_forwarded(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node)
{
    ngx_http_sf_oauth_node_t  *rec;

    rec = &ngx_http_sf_oauth_store_carried_rec;

    if (ngx_http_sf_oauth_carry_take(NGX_HTTP_SF_OAUTH_CARRY_FORWARD, node,
                                     0, 0, rec, 0)
        != NGX_OK)
    {
        return;
    }

    if (ngx_http_sf_oauth_store_same_records(rec, node) && rec->token_len
        && rec->generation > node->generation)
    {
        ngx_http_sf_oauth_store_set_token(node, NULL, rec);
        node->generation = rec->generation;

        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": the token of the "
                      "worker processes after the reload is taken",
                      &cred->name);
    }

    ngx_explicit_memzero(rec, sizeof(ngx_http_sf_oauth_node_t));
}


/*
 * From a timer (ngx_http_sf_oauth_ahead.c), in a worker of a configuration
 * whose commit moved the record here from another zone: whether a worker
 * before the reload, which cannot refresh in its old record, needs a
 * token newer than its record's generation (a request of its own got 401
 * after the reload).  A newer token here is forwarded to it through the
 * zone "sf_oauth_carry" (NGX_DONE); this token is the one it saw
 * rejected, or there is none: it is dropped as a 401 would drop it, and
 * this worker takes the lease as a request would
 * (NGX_HTTP_SF_OAUTH_GOT_LEASE), or waits for the refresh under way
 * (NGX_HTTP_SF_OAUTH_GOT_WAIT).  NGX_DECLINED: nothing is wanted.
 */

ngx_int_t
ngx_http_sf_oauth_store_relay(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_http_sf_oauth_lookup_t *lk)
{
    ngx_int_t                  rc;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node, *want;

    node = cred->rt.node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;
    want = &ngx_http_sf_oauth_store_carried_rec;

    ngx_shmtx_lock(&shpool->mutex);

    if (!ngx_http_sf_oauth_store_owns_node(cred)
        || !ngx_http_sf_oauth_store_same(cred, node)
        || ngx_http_sf_oauth_carry_take(NGX_HTTP_SF_OAUTH_CARRY_WANT, node,
                                        0, 0, want, 0)
           != NGX_OK)
    {
        ngx_shmtx_unlock(&shpool->mutex);
        return NGX_DECLINED;
    }

    if (!ngx_http_sf_oauth_store_same_records(want, node)) {
        /* another configuration's wish: not this one's to answer */
        rc = NGX_DECLINED;

    } else if (node->state == NGX_HTTP_SF_OAUTH_VALID
               && node->generation > want->generation)
    {
        (void) ngx_http_sf_oauth_carry_post(NGX_HTTP_SF_OAUTH_CARRY_FORWARD,
                                            node, 0, 0);
        (void) ngx_http_sf_oauth_carry_take(NGX_HTTP_SF_OAUTH_CARRY_WANT,
                                            node, 0, 0, NULL, 1);
        rc = NGX_DONE;

    } else if (node->state == NGX_HTTP_SF_OAUTH_FAILED
               && (ngx_msec_int_t) (node->backoff_until - ngx_current_msec)
                  > 0)
    {
        rc = NGX_HTTP_SF_OAUTH_GOT_WAIT;

    } else if (ngx_http_sf_oauth_store_not_connected(cred, node)) {
        rc = NGX_DECLINED;

    } else {
        if (node->state == NGX_HTTP_SF_OAUTH_VALID) {
            /* the token that the old worker's request saw rejected */
            node->state = NGX_HTTP_SF_OAUTH_EMPTY;
            node->invalidations++;
            node->rejected_at = ngx_current_msec;
        }

        rc = ngx_http_sf_oauth_store_lease(cred, node, pool, lk);
    }

    ngx_explicit_memzero(want, sizeof(ngx_http_sf_oauth_node_t));

    ngx_shmtx_unlock(&shpool->mutex);

    return rc;
}


/*
 * From a timer (ngx_http_sf_oauth_ahead.c), in a worker of a configuration
 * whose commit copied an old worker's lease into the record: 1 while it
 * lasts, 0 once its outcome is stored or it is over.
 */

ngx_uint_t
ngx_http_sf_oauth_store_carried(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_uint_t        rc;
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    rc = ngx_http_sf_oauth_store_owns_node(cred)
         && ngx_http_sf_oauth_store_carry(cred, cred->rt.node);

    ngx_shmtx_unlock(&shpool->mutex);

    return rc;
}


/*
 * The lookup of every request.  With a valid token it copies
 * "Bearer <token>" into the caller's pool: that one allocation is the
 * whole cost of the hot path.  Otherwise it tells the caller to fail, to
 * wait, or, when nobody refreshes, hands it the lease, taken in the same
 * critical section, for the refresh to start the token request under.
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

    node = cred->rt.node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    lk->introspect = 0;

    if (!ngx_http_sf_oauth_store_owns_node(cred)) {
        ngx_shmtx_unlock(&shpool->mutex);
        lk->error = ngx_http_sf_oauth_error_removed;
        lk->retry_after = 1;
        return NGX_HTTP_SF_OAUTH_GOT_ERROR;
    }

    if (node->state != NGX_HTTP_SF_OAUTH_VALID
        && node->carried
        && ngx_http_sf_oauth_store_carry(cred, node))
    {
        /* the token request of a worker before a reload is in flight */
        ngx_shmtx_unlock(&shpool->mutex);
        return NGX_HTTP_SF_OAUTH_GOT_WAIT;
    }

    if (node->state != NGX_HTTP_SF_OAUTH_VALID && node->moved) {
        /* a reload moved the record: the new workers' token, if any */
        ngx_http_sf_oauth_store_forwarded(cred, node);
    }

    if (node->state == NGX_HTTP_SF_OAUTH_VALID) {

        lk->authorization.len = sizeof("Bearer ") - 1 + node->token_len;

        p = ngx_pnalloc(pool, lk->authorization.len);
        if (p == NULL) {
            ngx_shmtx_unlock(&shpool->mutex);
            return NGX_ERROR;
        }

        lk->authorization.data = p;
        p = ngx_cpymem(p, "Bearer ", sizeof("Bearer ") - 1);
        ngx_memcpy(p, node->token, node->token_len);

        lk->generation = node->generation;
        lk->token_ms = node->token_ms;
        lk->token_adopted = node->token_adopted;
        node->last_use = ngx_current_msec;

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

    if (!ngx_http_sf_oauth_store_same(cred, node)) {

        /*
         * A reload changed the credential: the record is the new
         * configuration's, and a token request of this one's would be
         * thrown away (store_result).  The new workers get the token for
         * this request (store_handover); it waits for it.
         */

        node->wanted = 1;
        ngx_shmtx_unlock(&shpool->mutex);
        return NGX_HTTP_SF_OAUTH_GOT_WAIT;
    }

    if (ngx_http_sf_oauth_store_not_connected(cred, node)) {
        /* no refresh token to send: no token request, until a connection */
        ngx_shmtx_unlock(&shpool->mutex);
        lk->error = cred->not_connected;
        lk->retry_after = 0;
        return NGX_HTTP_SF_OAUTH_GOT_ERROR;
    }

    rc = ngx_http_sf_oauth_store_lease(cred, node, pool, lk);

    ngx_shmtx_unlock(&shpool->mutex);

    return rc;
}


/*
 * With the zone locked and no token: the lease for this worker, unless a
 * refresh runs or gets a quick retry soon (NGX_HTTP_SF_OAUTH_GOT_WAIT), or
 * a reload retired the zone (NGX_HTTP_SF_OAUTH_GOT_ERROR).
 */

static ngx_int_t
ngx_http_sf_oauth_store_lease(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node, ngx_pool_t *pool,
    ngx_http_sf_oauth_lookup_t *lk)
{
    if (!ngx_http_sf_oauth_store_can_lease(cred, node)
        || (node->busy
            && (ngx_msec_int_t) (node->busy_until - ngx_current_msec) > 0))
    {
        /* a refresh runs, or the one that ran gets a quick retry soon */
        return NGX_HTTP_SF_OAUTH_GOT_WAIT;
    }

    if (ngx_http_sf_oauth_store_is_retired(cred)) {

        if (node->moved
            && ngx_http_sf_oauth_carry_post(NGX_HTTP_SF_OAUTH_CARRY_WANT,
                                            node, 0, 0)
               == NGX_OK)
        {
            /*
             * A reload moved the record: this worker cannot refresh, for
             * the new workers may have rotated the refresh token, but
             * they get a token for it (store_relay), which its requests
             * wait for
             */
            return NGX_HTTP_SF_OAUTH_GOT_WAIT;
        }

        lk->error = ngx_http_sf_oauth_error_retired;
        lk->retry_after = 1;
        return NGX_HTTP_SF_OAUTH_GOT_ERROR;
    }

    /* take the lease: this worker makes the token request */

    if (node->lease_pid && node->lease_pid != ngx_pid) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": taking over the token "
                      "refresh of process %P", &cred->name, node->lease_pid);
    }

    return ngx_http_sf_oauth_take_refresh(cred, node, pool, lk);
}


/*
 * In a worker of a configuration whose reload changed the credential
 * (cred->rt.handover), from a timer: the workers before the reload cannot get
 * the record's token any more (store_lookup), and their requests may wait
 * for it.  When one of them said so (node->wanted), this worker takes the
 * lease as a request of its own would, once the old workers' token request
 * in flight is over.  Returns NGX_HTTP_SF_OAUTH_GOT_LEASE,
 * NGX_HTTP_SF_OAUTH_GOT_WAIT (look again soon), NGX_DECLINED (nothing is
 * wanted, and no token request is in flight), or NGX_DONE: the record has
 * this configuration's token or error, or a newer reload has it.
 */

ngx_int_t
ngx_http_sf_oauth_store_handover(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_http_sf_oauth_lookup_t *lk)
{
    ngx_int_t                  rc;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->rt.node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (!ngx_http_sf_oauth_store_owns_node(cred)
        || !ngx_http_sf_oauth_store_same(cred, node)
        || node->state == NGX_HTTP_SF_OAUTH_VALID
        || node->state == NGX_HTTP_SF_OAUTH_FAILED
        || ngx_http_sf_oauth_store_not_connected(cred, node))
    {
        rc = NGX_DONE;

    } else if (node->wanted) {
        rc = ngx_http_sf_oauth_store_lease(cred, node, pool, lk);

    } else {
        rc = node->lease_pid ? NGX_HTTP_SF_OAUTH_GOT_WAIT : NGX_DECLINED;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return rc;
}


/* whether a reload changed the credential: the record is another's */

ngx_uint_t
ngx_http_sf_oauth_store_changed(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_uint_t        changed;
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    changed = ngx_http_sf_oauth_store_owns_node(cred)
              && !ngx_http_sf_oauth_store_same(cred, cred->rt.node);

    ngx_shmtx_unlock(&shpool->mutex);

    return changed;
}


/*
 * Whether a record (the credential's, with the zone locked, or a
 * snapshot of it) is "not connected": a refresh_token credential whose
 * record has no refresh token.  Nothing else marks it: the record's
 * refresh token is the truth once it has one, from the configuration,
 * the state file, the fleet or a connection; a reload that keeps the
 * record (the credential's configuration unchanged but maybe its
 * token_url, ngx_http_sf_oauth_store_same) keeps it.
 * Its requests get cred->not_connected and it makes no token request;
 * the status, the metrics (held) and the console say so.
 */

ngx_uint_t
ngx_http_sf_oauth_store_not_connected(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node)
{
    return cred->grant == NGX_HTTP_SF_OAUTH_GRANT_REFRESH
           && node->refresh_len == 0
           && node->name_len != 0;
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
 * With the zone locked: the lease for this worker's grant, with the
 * refresh token of the record; counted as a token request.
 */

static ngx_int_t
ngx_http_sf_oauth_take_refresh(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node, ngx_pool_t *pool,
    ngx_http_sf_oauth_lookup_t *lk)
{
    ngx_int_t  rc;

    lk->introspect = 0;

    rc = ngx_http_sf_oauth_take_lease(cred, node, pool, &lk->secret,
                                      node->refresh, node->refresh_len);

    if (rc == NGX_HTTP_SF_OAUTH_GOT_LEASE) {
        lk->fleet_generation = node->fleet_generation;
        lk->fleet_unsynced = node->fleet_dirty;
    }

    return rc;
}


/*
 * Whether the refresh lease may be taken, with the zone locked: nobody
 * holds it, or its holder is past its deadline or gone.  A lease of this
 * very process without a transfer in flight is stale too: a worker that
 * reused a dead worker's pid.
 */

ngx_int_t
ngx_http_sf_oauth_store_can_lease(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node)
{
    if (node->carried) {
        /*
         * an old worker's lease that a reload carried here: its outcome
         * first (the refresh ahead, an introspection or a connection look
         * here without store_lookup's look); taken next time if over
         */
        (void) ngx_http_sf_oauth_store_carry(cred, node);
        return 0;
    }

    if (node->lease_pid == 0) {
        return 1;
    }

    if (cred->rt.transfer
        || cred->rt.fleet_state != NGX_HTTP_SF_OAUTH_FLEET_IDLE)
    {
        /* this worker's own request is still in flight, or its fleet's */
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


/*
 * The lease for a connection from the console (the code exchange, or the
 * confirmation of its tokens), so that no refresh runs at the same time:
 * NGX_OK, taken; NGX_BUSY, a refresh runs or gets a quick retry soon;
 * NGX_DECLINED, a reload removed or changed the credential, or retired
 * its zone.  Counted as a token request.
 */

ngx_int_t
ngx_http_sf_oauth_store_lease_connect(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_int_t                  rc;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->rt.node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (!ngx_http_sf_oauth_store_owns_node(cred)
        || !ngx_http_sf_oauth_store_same(cred, node)
        || ngx_http_sf_oauth_store_is_retired(cred))
    {
        rc = NGX_DECLINED;

    } else if (!ngx_http_sf_oauth_store_can_lease(cred, node)
               || (node->busy
                   && (ngx_msec_int_t) (node->busy_until - ngx_current_msec)
                      > 0))
    {
        rc = NGX_BUSY;

    } else {
        node->lease_pid = ngx_pid;
        node->lease_deadline = ngx_current_msec + cred->timeout
                               + NGX_HTTP_SF_OAUTH_LEASE_SLACK;
        node->token_requests++;
        rc = NGX_OK;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return rc;
}


/*
 * Stores the outcome of this worker's token request and drops its lease.
 * A reload that moved the record to another zone meanwhile gets it there
 * too, through the zone "sf_oauth_carry": the record here keeps serving
 * this worker's requests, the new one the new workers'.
 */

void
ngx_http_sf_oauth_store_result(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_token_t *tok)
{
    ngx_uint_t                 carry;
    ngx_msec_t                 deadline;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->rt.node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (!ngx_http_sf_oauth_store_owns_node(cred)) {
        /* a reload removed the credential meanwhile */
        ngx_shmtx_unlock(&shpool->mutex);
        return;
    }

    carry = node->moved && node->lease_pid == ngx_pid;
    deadline = node->lease_deadline;

    if (node->lease_pid == ngx_pid) {
        node->lease_pid = 0;
    }

    if (!ngx_http_sf_oauth_store_same(cred, node)) {
        /*
         * A reload changed the credential meanwhile: the answer is stale,
         * and whoever waited for it needs the new workers' token.  It
         * is counted as dropped, for the metrics.
         */
        node->wanted = 1;
        node->token_dropped++;
        ngx_shmtx_unlock(&shpool->mutex);
        return;
    }

    ngx_http_sf_oauth_store_outcome(cred, node, tok);

    if (carry
        && ngx_http_sf_oauth_carry_post(NGX_HTTP_SF_OAUTH_CARRY_OUTCOME,
                                        node, ngx_pid, deadline)
           == NGX_OK)
    {
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": a reload moved its "
                      "record to another sf_oauth_zone while its token "
                      "request was in flight: the outcome goes there "
                      "through the zone \"sf_oauth_carry\"", &cred->name);
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/* with the zone locked: the outcome of a token request into its record */

static void
ngx_http_sf_oauth_store_outcome(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node, ngx_http_sf_oauth_token_t *tok)
{
    ngx_uint_t  error_class;
    ngx_msec_t  delay;

    if (tok->ok) {
        ngx_http_sf_oauth_store_set_token(node, tok, NULL);
        node->token_ok++;
        ngx_http_sf_oauth_store_count_duration(node, tok->duration);
        node->wanted = 0;

        /* the last error stays, for the status output */

        return;
    }

    node->token_failures++;
    node->error_time = ngx_time();

    if (tok->error_class == NGX_HTTP_SF_OAUTH_OPERATOR) {
        node->token_operator++;

    } else {
        node->token_transient++;
    }

    ngx_http_sf_oauth_store_count_duration(node, tok->duration);

    node->error_len = ngx_min(tok->error.len, NGX_HTTP_SF_OAUTH_ERROR_MAX);
    ngx_memcpy(node->error, tok->error.data, node->error_len);

    if (tok->error_class == NGX_HTTP_SF_OAUTH_BUSY) {

        /*
         * Salesforce is still processing a request with this refresh
         * token: one of a worker that died or hung and was taken over, or
         * of another proxy.  Its answer is a moment away, so the state
         * stays as it is, waiting requests keep waiting, and the refresh
         * is tried again soon, sooner than any backoff: 250 ms, doubling.
         */

        delay = (ngx_msec_t) NGX_HTTP_SF_OAUTH_BUSY_RETRY
                << ngx_min(node->busy, 8);

        node->busy++;
        node->busy_until = ngx_current_msec
                           + ngx_min(delay, cred->backoff_max);

        return;
    }

    node->failures++;
    node->busy = 0;
    node->wanted = 0;

    /*
     * A worker of the configuration before a reload that changed the
     * client secret or private key failed with the old one: that failure
     * backs off, but does not hold the new secret or key.  (A token is a
     * token, whatever secret got it: it was stored above.)
     */

    error_class = tok->error_class;

    if (error_class == NGX_HTTP_SF_OAUTH_OPERATOR
        && node->secret_fp != cred->secret_fp)
    {
        error_class = NGX_HTTP_SF_OAUTH_TRANSIENT;
    }

    if (node->state != NGX_HTTP_SF_OAUTH_VALID) {
        delay = ngx_http_sf_oauth_backoff(cred, node->failures, error_class);

        node->state = NGX_HTTP_SF_OAUTH_FAILED;
        node->backoff_until = ngx_current_msec + delay;
        node->held = (error_class == NGX_HTTP_SF_OAUTH_OPERATOR);
    }
}


/*
 * With the zone locked (or, at start, not yet shared): a new token into the
 * record, as its next generation.  It comes from the token endpoint's
 * answer (tok), or from a record (rec) that Redis or the state file held;
 * the other one is NULL.
 *
 * The token and its fingerprint, the instance URL, the refresh token if
 * one came (else the record's stays), when the token was issued, and the
 * ids of its user: an answer without "id" leaves the ids as they were, a
 * record's ids replace them, empty or not; what the identity service said
 * is forgotten for another user.  The token was got now (an answer), or
 * when the record says: a caller with a rule for a record that does not
 * say applies it after.  A token ends the failures, the backoff, the hold
 * and a quick retry; the counters and the lease are the caller's.
 */

/*
 * A token answer that holds a record's access token, refresh token,
 * instance_url, user ids and issue time, pointing into the record.
 */

void
ngx_http_sf_oauth_store_record_token(ngx_http_sf_oauth_token_t *tok,
    ngx_http_sf_oauth_node_t *rec)
{
    ngx_memzero(tok, sizeof(ngx_http_sf_oauth_token_t));

    tok->access_token.len = rec->token_len;
    tok->access_token.data = rec->token;
    tok->instance_url.len = rec->url_len;
    tok->instance_url.data = rec->instance_url;
    tok->refresh_token.len = rec->refresh_len;
    tok->refresh_token.data = rec->refresh;
    tok->org_id.len = rec->org_id_len;
    tok->org_id.data = rec->org_id;
    tok->user_id.len = rec->user_id_len;
    tok->user_id.data = rec->user_id;
    tok->issued_at = rec->issued_at;
}


void
ngx_http_sf_oauth_store_set_token(ngx_http_sf_oauth_node_t *node,
    ngx_http_sf_oauth_token_t *tok, ngx_http_sf_oauth_node_t *rec)
{
    ngx_time_t                 *tp;
    ngx_http_sf_oauth_token_t   from;

    if (rec) {
        ngx_http_sf_oauth_store_record_token(&from, rec);
        tok = &from;
    }

    node->state = NGX_HTTP_SF_OAUTH_VALID;
    node->generation++;

    node->token_len = tok->access_token.len;
    ngx_memcpy(node->token, tok->access_token.data, node->token_len);
    ngx_http_sf_oauth_redact_fingerprint(node->token_fp, node->token,
                                         node->token_len);

    node->url_len = tok->instance_url.len;
    ngx_memcpy(node->instance_url, tok->instance_url.data, node->url_len);

    if (rec || tok->org_id.len) {
        if (tok->user_id.len != node->user_id_len
            || ngx_memcmp(tok->user_id.data, node->user_id,
                          node->user_id_len)
               != 0)
        {
            /* another user: what the identity service said is not its */
            node->identity_known = 0;
        }

        node->org_id_len = tok->org_id.len;
        ngx_memcpy(node->org_id, tok->org_id.data, node->org_id_len);
        node->user_id_len = tok->user_id.len;
        ngx_memcpy(node->user_id, tok->user_id.data, node->user_id_len);
    }

    if (tok->refresh_token.len) {
        ngx_explicit_memzero(node->refresh, sizeof(node->refresh));
        node->refresh_len = tok->refresh_token.len;
        ngx_memcpy(node->refresh, tok->refresh_token.data,
                   node->refresh_len);
    }

    node->issued_at = tok->issued_at;

    if (rec) {
        node->token_time = rec->token_time;
        node->token_ms = rec->token_ms;

    } else {
        node->token_time = ngx_time();
        node->token_ms = ngx_http_sf_oauth_wall_ms(tp);
    }

    node->token_adopted = (rec != NULL);

    /* for a refresh ahead, the token's age starts now */
    node->token_msec = ngx_current_msec;

    node->failures = 0;
    node->backoff_until = 0;
    node->held = 0;
    node->busy = 0;
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

    node = cred->rt.node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;
    now = ngx_current_msec;
    dropped = 0;

    ngx_shmtx_lock(&shpool->mutex);

    if (!ngx_http_sf_oauth_store_owns_node(cred)
        || node->state != NGX_HTTP_SF_OAUTH_VALID
        || !ngx_http_sf_oauth_store_same(cred, node))
    {
        /*
         * Dropped already, or refreshing, or failed: the lookup tells.
         * The token of a configuration that a reload brought is not this
         * worker's to drop.
         */
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
                      "access token fp:%*s (a dead session), refreshing",
                      &cred->name, (size_t) NGX_HTTP_SF_OAUTH_FP_LEN, fp);
    }

    return rc;
}


/*
 * The answer to a request replayed after a 401 with the token of
 * "generation": "cured" if it was not a 401 again.  Counted once per
 * token, so that many replays of one refresh count as one; the newest
 * token that cured a 401 is kept (see ngx_http_sf_oauth_store_uncured).
 */

void
ngx_http_sf_oauth_store_replayed(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, ngx_uint_t cured, ngx_log_t *log)
{
    ngx_uint_t                 first;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->rt.node;

    if (cured && node->uncured == 0 && node->cured_generation >= generation)
    {
        /* the usual case, read without the lock: nothing to change */
        return;
    }

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;
    first = 0;

    ngx_shmtx_lock(&shpool->mutex);

    if (!ngx_http_sf_oauth_store_owns_node(cred)) {
        /* a record of another configuration's */

    } else if (cured) {
        node->uncured = 0;
        node->uncured_generation = 0;
        node->cured_generation = ngx_max(node->cured_generation,
                                         generation);

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


/*
 * Whether 401s lately were not cured by a refresh: a request replayed with
 * a token got after its 401 was answered 401 again, and no replay has
 * succeeded since (see ngx_http_sf_oauth_store_replayed); and in *cured,
 * whether a replay succeeded with the token of "generation".  Read under the
 * lock, unlike store_replayed's fast path: it is asked only for a replay's
 * 401, never on the hot path, and whether the record is still the
 * credential's compares its name, which a reload's new workers may be
 * writing.
 */

ngx_uint_t
ngx_http_sf_oauth_store_uncured(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, ngx_uint_t *cured)
{
    ngx_uint_t                 uncured;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->rt.node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;
    uncured = 0;
    *cured = 0;

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_http_sf_oauth_store_owns_node(cred)) {
        uncured = node->uncured;
        *cured = (node->cured_generation >= generation);
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return uncured;
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

    node = cred->rt.node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;
    now = ngx_current_msec;

    ngx_shmtx_lock(&shpool->mutex);

    if (!ngx_http_sf_oauth_store_owns_node(cred)) {
        /* a reload removed the credential */
        *next = cred->refresh_ahead;
        rc = NGX_DECLINED;

    } else if (node->state != NGX_HTTP_SF_OAUTH_VALID) {
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
            rc = ngx_http_sf_oauth_store_can_lease(cred, node)
                 && !ngx_http_sf_oauth_store_is_retired(cred)
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

    rc = ngx_http_sf_oauth_take_refresh(cred, node, pool, lk);

    if (rc == NGX_HTTP_SF_OAUTH_GOT_LEASE) {
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

    if (!ngx_http_sf_oauth_store_can_lease(cred, node)
        || ngx_http_sf_oauth_store_is_retired(cred))
    {
        return NGX_DECLINED;
    }

    lk->introspect = 1;
    lk->generation = node->generation;

    rc = ngx_http_sf_oauth_take_lease(cred, node, pool, &lk->secret,
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

    node = cred->rt.node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (!ngx_http_sf_oauth_store_owns_node(cred)) {
        ngx_shmtx_unlock(&shpool->mutex);
        return NGX_DECLINED;
    }

    if (node->lease_pid == ngx_pid) {
        node->lease_pid = 0;
    }

    if (node->generation != generation
        || node->state != NGX_HTTP_SF_OAUTH_VALID
        || !ngx_http_sf_oauth_store_same(cred, node))
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

    if (ngx_http_sf_oauth_store_is_retired(cred)) {
        ngx_shmtx_unlock(&shpool->mutex);
        return NGX_DECLINED;
    }

    rc = ngx_http_sf_oauth_store_refresh_ahead(cred, node, pool, lk);

    ngx_shmtx_unlock(&shpool->mutex);

    return rc;
}


/*
 * Gives up this worker's lease without a result, as on exit.  If a reload
 * moved the record meanwhile, the record as it is goes to the new one, so
 * that its workers take the refresh over now rather than at the lease's
 * deadline.
 */

void
ngx_http_sf_oauth_store_release(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_http_sf_oauth_store_owns_node(cred)
        && cred->rt.node->lease_pid == ngx_pid)
    {
        if (cred->rt.node->moved) {
            (void) ngx_http_sf_oauth_carry_post(
                                         NGX_HTTP_SF_OAUTH_CARRY_OUTCOME,
                                         cred->rt.node, ngx_pid,
                                         cred->rt.node->lease_deadline);
        }

        cred->rt.node->lease_pid = 0;
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

    if (ngx_http_sf_oauth_store_owns_node(cred)) {
        ngx_memcpy(copy, cred->rt.node, sizeof(ngx_http_sf_oauth_node_t));

    } else {
        /* a reload removed the credential: nothing to show */
        ngx_memzero(copy, sizeof(ngx_http_sf_oauth_node_t));
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


ngx_int_t
ngx_http_sf_oauth_store_instance_url(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_str_t *url)
{
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->rt.node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    url->len = ngx_http_sf_oauth_store_owns_node(cred) ? node->url_len : 0;
    url->data = ngx_pnalloc(pool, url->len + 1);

    if (url->data) {
        ngx_memcpy(url->data, node->instance_url, url->len);
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return url->data ? NGX_OK : NGX_ERROR;
}


/*
 * The instance_url and the org id of the token's answer, in one copy made
 * under the lock (the Pub/Sub API's instanceurl and tenantid): empty when
 * not known.
 */

ngx_int_t
ngx_http_sf_oauth_store_tenant(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_str_t *url, ngx_str_t *org_id)
{
    u_char                    *p;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->rt.node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    p = ngx_pnalloc(pool, NGX_HTTP_SF_OAUTH_URL_MAX + NGX_HTTP_SF_OAUTH_ID_MAX);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_http_sf_oauth_store_owns_node(cred)) {
        url->data = p;
        url->len = node->url_len;
        p = ngx_cpymem(p, node->instance_url, node->url_len);

        org_id->data = p;
        org_id->len = node->org_id_len;
        ngx_memcpy(p, node->org_id, node->org_id_len);

    } else {
        ngx_str_null(url);
        ngx_str_null(org_id);
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return NGX_OK;
}


/*
 * Who the token's user is: the ids (empty when not known) and, once read,
 * what the identity service said of that user.
 */

ngx_int_t
ngx_http_sf_oauth_store_identity(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_http_sf_oauth_who_t *who)
{
    u_char                    *p;
    ngx_uint_t                 i;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->rt.node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_memzero(who, sizeof(ngx_http_sf_oauth_who_t));

    p = ngx_pnalloc(pool, 2 * NGX_HTTP_SF_OAUTH_ID_MAX
                          + NGX_HTTP_SF_OAUTH_FIELDS
                            * NGX_HTTP_SF_OAUTH_FIELD_MAX);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_http_sf_oauth_store_owns_node(cred)) {
        who->org_id.data = p;
        who->org_id.len = node->org_id_len;
        p = ngx_cpymem(p, node->org_id, node->org_id_len);

        who->user_id.data = p;
        who->user_id.len = node->user_id_len;
        p = ngx_cpymem(p, node->user_id, node->user_id_len);

        who->known = node->identity_known;

        for (i = 0; who->known && i < NGX_HTTP_SF_OAUTH_FIELDS; i++) {
            who->field[i].data = p;
            who->field[i].len = node->field_len[i];
            p = ngx_cpymem(p, node->field[i], node->field_len[i]);
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return NGX_OK;
}


/* whether the identity service was read for the token's user */

ngx_uint_t
ngx_http_sf_oauth_store_identity_known(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_uint_t        known;
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);
    known = ngx_http_sf_oauth_store_owns_node(cred)
            && cred->rt.node->identity_known;
    ngx_shmtx_unlock(&shpool->mutex);

    return known;
}


/* what the identity service said, if it is about the token's user still */

void
ngx_http_sf_oauth_store_identity_set(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_who_t *who)
{
    ngx_uint_t                 i;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->rt.node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_http_sf_oauth_store_owns_node(cred)
        && who->user_id.len == node->user_id_len
        && ngx_strncmp(who->user_id.data, node->user_id, node->user_id_len)
           == 0)
    {
        for (i = 0; i < NGX_HTTP_SF_OAUTH_FIELDS; i++) {
            node->field_len[i] = ngx_min(who->field[i].len,
                                         NGX_HTTP_SF_OAUTH_FIELD_MAX);
            ngx_memcpy(node->field[i], who->field[i].data,
                       node->field_len[i]);
        }

        node->identity_known = 1;
    }

    ngx_shmtx_unlock(&shpool->mutex);
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


/* a token request's duration, into the histogram: see the metrics */

static ngx_msec_t  ngx_http_sf_oauth_bounds[NGX_HTTP_SF_OAUTH_BUCKETS] = {
    50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000
};


static void
ngx_http_sf_oauth_store_count_duration(ngx_http_sf_oauth_node_t *node,
    ngx_msec_t duration)
{
    ngx_uint_t  i;

    if (duration == 0) {
        /* no request went out */
        return;
    }

    node->duration_count++;
    node->duration_sum += duration;

    for (i = 0; i < NGX_HTTP_SF_OAUTH_BUCKETS; i++) {
        if (duration <= ngx_http_sf_oauth_bounds[i]) {
            node->duration_bucket[i]++;
            break;
        }
    }
}


/* a worker's request counts and the latest API usage, at most each second */

void
ngx_http_sf_oauth_store_metrics(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t *counted, ngx_uint_t api_used, ngx_uint_t api_limit,
    ngx_msec_t api_msec)
{
    ngx_uint_t        i;
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_http_sf_oauth_store_owns_node(cred)) {
        for (i = 0; i < NGX_HTTP_SF_OAUTH_STATUSES; i++) {
            cred->rt.node->requests[i] += counted[i];
        }

        /* another worker may have flushed a newer usage meanwhile */

        if (api_limit
            && (cred->rt.node->api_limit == 0
                || (ngx_msec_int_t) (api_msec - cred->rt.node->api_msec) >= 0))
        {
            cred->rt.node->api_used = api_used;
            cred->rt.node->api_limit = api_limit;
            cred->rt.node->api_time = ngx_time();
            cred->rt.node->api_msec = api_msec;
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/*
 * One more in a counter of the record, for the status output and the
 * metrics: "counter" is NGX_HTTP_SF_OAUTH_COUNT_REPLAYS (a request held
 * for a replay), NGX_HTTP_SF_OAUTH_COUNT_WAIT_TIMEOUTS (a waiting
 * request's deadline passed), NGX_HTTP_SF_OAUTH_COUNT_DROPPED (a token
 * request abandoned by an exiting worker) or
 * NGX_HTTP_SF_OAUTH_COUNT_TOKEN_REQUESTS (a token request begins: counted
 * then, not when the lease is taken, as a fleet may answer that no
 * request is needed), the offset of an ngx_uint_t in the record.
 */

void
ngx_http_sf_oauth_store_count(ngx_http_sf_oauth_cred_t *cred,
    size_t counter)
{
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_http_sf_oauth_store_owns_node(cred)) {
        (*(ngx_uint_t *) ((u_char *) cred->rt.node + counter))++;
    }

    ngx_shmtx_unlock(&shpool->mutex);
}
