
/*
 * What the fleet (sf_oauth_zone redis=) keeps in a credential's record of
 * the zone, each under the zone's lock: a token from Redis, the fleet
 * generation of the zone's token and whether it is still to be written
 * back, the last fleet lease owner, the mark of a record written with
 * another key, and the zone's Redis outage and primary: the run_id of the
 * server, the time of its last change, and the quarantine of the fleet's
 * lease after it.  The Redis protocol and the fleet's lease are in
 * ngx_http_sf_oauth_fleet.c.
 */


#include "ngx_http_sf_oauth.h"


/*
 * The fleet (sf_oauth_zone redis=).  A token from Redis of a newer fleet
 * generation than the zone's is copied in, as a new local generation; the
 * lease of this worker, if any, is given back with it.  A record without
 * an access token (one that Salesforce rejected before it was written:
 * see ngx_http_sf_oauth_fleet_restore) brings its refresh token only: the
 * zone's token is dropped, a failure or backoff of the zone's ends (as
 * with a whole record: they were another refresh token's), and the next
 * request refreshes with it.
 */

ngx_int_t
ngx_http_sf_oauth_store_fleet(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *rec, ngx_uint_t fleet_generation)
{
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->rt.node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (!ngx_http_sf_oauth_store_owns_node(cred)
        || !ngx_http_sf_oauth_store_same(cred, node)
        || fleet_generation <= node->fleet_generation)
    {
        ngx_shmtx_unlock(&shpool->mutex);
        return NGX_DECLINED;
    }

    if (rec->token_len) {
        ngx_http_sf_oauth_store_set_token(node, NULL, rec);

        if (rec->token_time == 0) {
            /* a record that does not say when: got now, for the status */
            node->token_time = ngx_time();
        }

    } else {
        if (node->state == NGX_HTTP_SF_OAUTH_VALID) {
            node->state = NGX_HTTP_SF_OAUTH_EMPTY;
            node->invalidations++;

        } else if (node->state == NGX_HTTP_SF_OAUTH_FAILED) {
            /* the failure was another refresh token's: as set_token */
            node->state = NGX_HTTP_SF_OAUTH_EMPTY;
        }

        node->failures = 0;
        node->backoff_until = 0;
        node->held = 0;
        node->busy = 0;

        ngx_explicit_memzero(node->refresh, sizeof(node->refresh));
        node->refresh_len = rec->refresh_len;
        ngx_memcpy(node->refresh, rec->refresh, rec->refresh_len);
    }

    node->fleet_generation = fleet_generation;
    node->fleet_dirty = 0;

    if (node->lease_pid == ngx_pid) {
        if (node->moved) {
            /* a reload moved the record: the token goes there too */
            (void) ngx_http_sf_oauth_carry_post(
                                         NGX_HTTP_SF_OAUTH_CARRY_OUTCOME,
                                         node, ngx_pid, node->lease_deadline);
        }

        node->lease_pid = 0;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return NGX_OK;
}


/* the zone's token of local "generation" is fleet generation "fleet" */

void
ngx_http_sf_oauth_store_fleet_stored(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, ngx_uint_t fleet)
{
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_http_sf_oauth_store_owns_node(cred)
        && cred->rt.node->generation == generation)
    {
        cred->rt.node->fleet_generation = fleet;
        cred->rt.node->fleet_dirty = 0;
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/*
 * Whether a token request of the zone began since it had made "requests"
 * (or the credential is gone): a refresh may have rotated the refresh
 * token that the zone held then.  A token adopted from the fleet is none.
 */

ngx_uint_t
ngx_http_sf_oauth_store_fleet_requested(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t requests)
{
    ngx_uint_t        requested;
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    requested = !ngx_http_sf_oauth_store_owns_node(cred)
                || cred->rt.node->token_requests != requests;

    ngx_shmtx_unlock(&shpool->mutex);

    return requested;
}


/* the zone's token was got while Redis was unreachable, or is in Redis */

void
ngx_http_sf_oauth_store_fleet_mark(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t dirty)
{
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_http_sf_oauth_store_owns_node(cred)) {
        cred->rt.node->fleet_dirty = dirty;
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/*
 * Whether the zone's token is one that Redis never got (its write-back
 * refused, or Redis unreachable when it was got), whoever holds the lease
 */

ngx_uint_t
ngx_http_sf_oauth_store_fleet_unwritten(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_uint_t        unwritten;
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    unwritten = ngx_http_sf_oauth_store_owns_node(cred)
                && cred->rt.node->fleet_dirty
                && cred->rt.node->token_len;

    ngx_shmtx_unlock(&shpool->mutex);

    return unwritten;
}


/*
 * This worker's lease in the zone, while it waits for the fleet (a
 * failover, the quarantine after a change of primary) and then makes its
 * token request: kept until "deadline".  Its first deadline, a token
 * request's time, is shorter than such a wait: the node's other worker
 * would take the refresh over, and make a token request beside this
 * one's, with the same refresh token.
 */

void
ngx_http_sf_oauth_store_fleet_extend_lease(ngx_http_sf_oauth_cred_t *cred,
    ngx_msec_t deadline)
{
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    node = cred->rt.node;

    /*
     * A record that a reload moved keeps its deadline: the new zone's copy
     * of the lease, and the outcome posted to sf_oauth_carry, are known by
     * it (see ngx_http_sf_oauth_carry.c)
     */

    if (ngx_http_sf_oauth_store_owns_node(cred)
        && node->lease_pid == ngx_pid
        && !node->moved
        && (ngx_msec_int_t) (deadline - node->lease_deadline) > 0)
    {
        node->lease_deadline = deadline;
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/* the last fleet lease owner seen, for sf_oauth_info; NULL: none */

void
ngx_http_sf_oauth_store_fleet_owner(ngx_http_sf_oauth_cred_t *cred,
    u_char *owner, size_t len)
{
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    len = ngx_min(len, NGX_HTTP_SF_OAUTH_OWNER_MAX);

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_http_sf_oauth_store_owns_node(cred)) {
        cred->rt.node->fleet_owner_len = owner ? len : 0;

        if (owner) {
            ngx_memcpy(cred->rt.node->fleet_owner, owner, len);
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/*
 * Marks the fleet's record as written with another key than the zone's
 * (mismatch), or as readable (0).  Returns whether it was marked before:
 * for the zone's key when marking (a mark made with another key of the
 * zone, before a reload, counts as none), and for any key when clearing.
 */

ngx_uint_t
ngx_http_sf_oauth_store_fleet_key(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t mismatch)
{
    u_char                    *fp;
    ngx_uint_t                 old;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    old = 0;

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_http_sf_oauth_store_owns_node(cred)) {
        fp = cred->rt.node->fleet_key_mismatch;

        if (mismatch) {
            old = ngx_memcmp(fp, zone->key_fp, NGX_HTTP_SF_OAUTH_FP_LEN)
                  == 0;
            ngx_memcpy(fp, zone->key_fp, NGX_HTTP_SF_OAUTH_FP_LEN);

        } else {
            /* a mark is hex digits */
            old = fp[0] != '\0';
            ngx_memzero(fp, NGX_HTTP_SF_OAUTH_FP_LEN);
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return old;
}


/* whether the fleet's record is marked as written with another key */

ngx_uint_t
ngx_http_sf_oauth_store_fleet_key_mismatch(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_uint_t                 mismatch;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    mismatch = ngx_http_sf_oauth_store_owns_node(cred)
               && ngx_memcmp(cred->rt.node->fleet_key_mismatch, zone->key_fp,
                             NGX_HTTP_SF_OAUTH_FP_LEN) == 0;

    ngx_shmtx_unlock(&shpool->mutex);

    return mismatch;
}


/*
 * The generations of the zone's token, the fleet's and the local one,
 * and whether it is still to be written back; 0 for a removed credential.
 */

ngx_uint_t
ngx_http_sf_oauth_store_fleet_view(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t *generation, ngx_uint_t *dirty)
{
    ngx_uint_t        fleet;
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    fleet = 0;
    *generation = 0;
    *dirty = 0;

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_http_sf_oauth_store_owns_node(cred)) {
        fleet = cred->rt.node->fleet_generation;
        *generation = cred->rt.node->generation;
        /*
         * A token not yet written back, even one that Salesforce has
         * rejected since: its refresh token is the newest there is, and
         * must reach the fleet.  Not while a refresh of this node runs,
         * whose outcome is written back by its worker.
         */
        *dirty = cred->rt.node->fleet_dirty && cred->rt.node->token_len
                 && ngx_http_sf_oauth_store_can_lease(cred, cred->rt.node);
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return fleet;
}


/* marks the zone's Redis outage as logged, or over; returns the old mark */

ngx_uint_t
ngx_http_sf_oauth_store_fleet_outage(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t outage)
{
    ngx_uint_t                 old;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    old = zone->sh->outage;
    zone->sh->outage = outage;

    ngx_shmtx_unlock(&shpool->mutex);

    return old;
}


/* a backoff for "error" alone ends now: its cause is gone */

void
ngx_http_sf_oauth_store_fleet_retry(ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *error)
{
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;

    node = cred->rt.node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_http_sf_oauth_store_owns_node(cred)
        && node->state == NGX_HTTP_SF_OAUTH_FAILED
        && node->error_len == error->len
        && ngx_memcmp(node->error, error->data, error->len) == 0)
    {
        node->backoff_until = ngx_current_msec;
        node->failures = 0;
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/*
 * The run_id of the Redis server that a command connection of the node
 * was just set up with, and the place of the fleet's keys on it (the
 * sf_oauth_redis block's prefix and database).  Returns
 * NGX_HTTP_SF_OAUTH_FLEET_NEW_PRIMARY when the run_id differs from the
 * last one seen (a failover, an endpoint that moved, a restart that lost
 * its data), NGX_HTTP_SF_OAUTH_FLEET_NEW_PLACE when only the place does (a
 * reload changed the prefix or the database: the nodes not reloaded yet,
 * and the old workers, still use the old place, and its lease); either
 * change is counted and timed, and "old" is the run_id before.  The first
 * run_id a zone ever sees is none, nor is an unknown one.  A worker that
 * is shutting down (a reload) has the old configuration: it changes
 * nothing.
 */

ngx_uint_t
ngx_http_sf_oauth_store_fleet_primary(ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *run_id, ngx_str_t *old)
{
    uint32_t                   place;
    ngx_uint_t                 changed;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_sh_t    *sh;
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;
    sh = zone->sh;

    changed = 0;

    if (run_id->len == 0 || run_id->len > NGX_HTTP_SF_OAUTH_RUN_ID_LEN
        || zone->redis == NULL || ngx_exiting)
    {
        return 0;
    }

    ngx_crc32_init(place);
    ngx_crc32_update(&place, zone->redis->prefix.data,
                     zone->redis->prefix.len);
    ngx_crc32_update(&place, (u_char *) &zone->redis->database,
                     sizeof(ngx_int_t));
    ngx_crc32_final(place);

    if (place == 0) {
        place = 1;
    }

    ngx_shmtx_lock(&shpool->mutex);

    if (sh->run_id_len != run_id->len
        || ngx_memcmp(sh->run_id, run_id->data, run_id->len) != 0)
    {
        if (sh->run_id_len) {
            changed = NGX_HTTP_SF_OAUTH_FLEET_NEW_PRIMARY;
            ngx_memcpy(old->data, sh->run_id, sh->run_id_len);
            old->len = sh->run_id_len;
        }

        ngx_memcpy(sh->run_id, run_id->data, run_id->len);
        sh->run_id_len = run_id->len;

    } else if (sh->place && sh->place != place) {
        changed = NGX_HTTP_SF_OAUTH_FLEET_NEW_PLACE;
    }

    sh->place = place;

    if (changed) {
        sh->failovers++;
        sh->failover_at = ngx_current_msec ? ngx_current_msec : 1;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return changed;
}


/*
 * The fleet generation that Redis holds now, as a reply of the primary
 * said.  The first since a change of primary, or the zone's own if newer
 * (a node puts its generation back into a primary that lost it: that is
 * no new write), is the credential's base; a newer one than the base was
 * written since: the lease of the old primary, if any, was given back
 * (its owner wrote its outcome back), and the quarantine is over for the
 * credential.
 */

void
ngx_http_sf_oauth_store_fleet_seen(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation)
{
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;
    node = cred->rt.node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_http_sf_oauth_store_owns_node(cred) && zone->sh->failovers) {

        if (node->fleet_failover != zone->sh->failovers) {
            node->fleet_failover = zone->sh->failovers;
            node->fleet_failover_base = ngx_max(generation,
                                                node->fleet_generation);
            node->fleet_released = 0;

        } else if (generation > node->fleet_failover_base) {
            node->fleet_released = 1;
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/*
 * How long (ms) the credential takes no fleet lease still: a lease's time
 * to live "ttl" since the primary changed, unless a newer generation was
 * written since; 0: none.
 */

ngx_msec_t
ngx_http_sf_oauth_store_fleet_quarantine(ngx_http_sf_oauth_cred_t *cred,
    ngx_msec_t ttl)
{
    ngx_msec_int_t             left;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_node_t  *node;
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;
    node = cred->rt.node;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    left = 0;

    ngx_shmtx_lock(&shpool->mutex);

    if (zone->sh->failover_at
        && !(ngx_http_sf_oauth_store_owns_node(cred)
             && node->fleet_failover == zone->sh->failovers
             && node->fleet_released))
    {
        left = (ngx_msec_int_t) (zone->sh->failover_at + ttl
                                 - ngx_current_msec);
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return left > 0 ? (ngx_msec_t) left : 0;
}


/*
 * The node's view of a Redis outage: "mark" sets, "clear" ends, the
 * outage's kinds (NGX_HTTP_SF_OAUTH_FLEET_UNREACHABLE, _REFUSED).
 * Returns since when (ms) the outage lasts, the earlier of the kinds, or
 * 0 when there is none; with "logged", whether a worker has said that
 * requests wait for it, and marks it said.  Unreachable ends when a
 * connection is set up; a refusal, when the lease script is answered, or
 * when none was seen for failover_wait and a second (no one asked: the
 * server may have been promoted since).
 */

ngx_msec_t
ngx_http_sf_oauth_store_fleet_down(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t mark, ngx_uint_t clear, ngx_uint_t *logged)
{
    ngx_msec_t                 since, now;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_sh_t    *sh;
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;
    sh = zone->sh;

    now = ngx_current_msec ? ngx_current_msec : 1;

    ngx_shmtx_lock(&shpool->mutex);

    if ((clear & NGX_HTTP_SF_OAUTH_FLEET_UNREACHABLE)) {
        sh->down_since = 0;
    }

    if ((clear & NGX_HTTP_SF_OAUTH_FLEET_REFUSED)) {
        sh->refused_since = 0;
    }

    if ((mark & NGX_HTTP_SF_OAUTH_FLEET_UNREACHABLE) && sh->down_since == 0) {
        sh->down_since = now;
    }

    if (sh->refused_since
        && (ngx_msec_int_t) (now - sh->refused_last)
           > (ngx_msec_int_t) (zone->redis->failover_wait + 1000))
    {
        sh->refused_since = 0;
    }

    if ((mark & NGX_HTTP_SF_OAUTH_FLEET_REFUSED)) {
        if (sh->refused_since == 0) {
            sh->refused_since = now;
        }

        sh->refused_last = now;
    }

    since = sh->down_since;

    if (sh->refused_since
        && (since == 0
            || (ngx_msec_int_t) (sh->refused_since - since) < 0))
    {
        since = sh->refused_since;
    }

    if (since == 0) {
        sh->wait_logged = 0;
    }

    if (logged) {
        *logged = sh->wait_logged;
        sh->wait_logged = 1;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return since;
}


/* how many changes of the Redis primary the node has seen */

ngx_uint_t
ngx_http_sf_oauth_store_fleet_failovers(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_uint_t                 n;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;
    shpool = (ngx_slab_pool_t *) cred->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);
    n = zone->sh->failovers;
    ngx_shmtx_unlock(&shpool->mutex);

    return n;
}
