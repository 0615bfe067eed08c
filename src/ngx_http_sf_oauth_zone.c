
/*
 * The zone's life across reloads: the records of an sf_oauth_zone, one per
 * credential, are made at start, kept, carried over or dropped by each
 * reload, in the master.  Records are keyed by the credential name, so a
 * reload maps them back; a fingerprint of the credential's configuration
 * drops a token that a changed configuration no longer vouches for.  What
 * the workers do with a record is in ngx_http_sf_oauth_store.c.
 */


#include "ngx_http_sf_oauth.h"


static ngx_int_t ngx_http_sf_oauth_zone_attach_cred(
    ngx_http_sf_oauth_zone_t *zone, ngx_http_sf_oauth_cred_t *cred);
static ngx_uint_t ngx_http_sf_oauth_zone_prune_records(
    ngx_http_sf_oauth_zone_t *zone);
static void ngx_http_sf_oauth_zone_check_url(ngx_cycle_t *cycle,
    ngx_http_sf_oauth_zone_t *zone);
static void ngx_http_sf_oauth_zone_check_secrets(ngx_cycle_t *cycle,
    ngx_http_sf_oauth_zone_t *zone);
static ngx_http_sf_oauth_node_t *ngx_http_sf_oauth_zone_find_record(
    ngx_http_sf_oauth_zone_t *zone, ngx_str_t *name);
static ngx_http_sf_oauth_zone_t *ngx_http_sf_oauth_zone_find_old(
    ngx_shm_zone_t *shm_zone);
static void ngx_http_sf_oauth_zone_carry_primary(
    ngx_http_sf_oauth_zone_t *zone, ngx_http_sf_oauth_zone_t *old);
static void ngx_http_sf_oauth_zone_carry_records(ngx_cycle_t *cycle,
    ngx_array_t *zones);
static ngx_int_t ngx_http_sf_oauth_zone_is_kept(ngx_cycle_t *cycle,
    ngx_shm_zone_t *oshm);
static ngx_http_sf_oauth_cred_t *ngx_http_sf_oauth_zone_find_cred(
    ngx_array_t *zones, ngx_str_t *name);
static void ngx_http_sf_oauth_zone_copy_record(ngx_cycle_t *cycle,
    ngx_http_sf_oauth_zone_t *ozone, ngx_http_sf_oauth_cred_t *ocred,
    ngx_http_sf_oauth_cred_t *cred);
static void ngx_http_sf_oauth_zone_reset_record(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node);


/*
 * At start and on reload, in the master.  A reload that keeps the zone's
 * size hands over the old zone ("data"); one that changes it gets a new,
 * empty zone, into which the records of the old one are copied once the
 * new configuration is committed (ngx_http_sf_oauth_zone_commit).  A new
 * zone reads its state file, but a resized one: its old records are newer.
 */

ngx_int_t
ngx_http_sf_oauth_zone_init(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_sf_oauth_zone_t  *ozone = data;

    size_t                     len;
    ngx_uint_t                 i, n, fresh, pruned;
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

            zone->resized = ngx_http_sf_oauth_zone_find_old(shm_zone);
        }
    }

    /* running out of room is reported below, with the way out */
    zone->shpool->log_nomem = 0;

    cred = zone->creds.elts;
    pruned = 0;

    for (i = 0; i < zone->creds.nelts; i++) {
        if (ngx_http_sf_oauth_zone_attach_cred(zone, cred[i]) == NGX_OK) {
            continue;
        }

        /*
         * No room: the records of credentials that the new configuration
         * no longer has would go at the commit anyway; they go now.
         */

        if (pruned++) {
            goto too_small;
        }

        ngx_shmtx_lock(&zone->shpool->mutex);
        n = ngx_http_sf_oauth_zone_prune_records(zone);
        ngx_shmtx_unlock(&zone->shpool->mutex);

        if (n == 0) {
            goto too_small;
        }

        ngx_log_error(NGX_LOG_NOTICE, shm_zone->shm.log, 0,
                      "sf_oauth_zone \"%V\": dropped the records of %ui "
                      "credentials that are no longer configured",
                      &shm_zone->shm.name, n);

        if (ngx_http_sf_oauth_zone_attach_cred(zone, cred[i]) != NGX_OK) {
            goto too_small;
        }
    }

    /*
     * A new zone, at start: the tokens from the state file, if any.  A
     * resized zone gets the records of the old one instead: they are
     * never older than the file.
     */

    if (fresh && zone->state.len && zone->resized == NULL) {
        ngx_shmtx_lock(&zone->shpool->mutex);
        ngx_http_sf_oauth_state_load(zone, shm_zone->shm.log);
        ngx_shmtx_unlock(&zone->shpool->mutex);
    }

    return NGX_OK;

too_small:

    ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                  "sf_oauth_zone \"%V\" of %uzk is too small for its %ui "
                  "credentials, about %uz bytes each: give it a larger size",
                  &shm_zone->shm.name, shm_zone->shm.size / 1024,
                  zone->creds.nelts, sizeof(ngx_http_sf_oauth_node_t));

    return NGX_ERROR;
}


/*
 * Once a configuration is committed (init_module, in the master, while
 * ngx_cycle is still the running configuration's): a credential whose
 * record is new in its zone gets the record it had in a zone of the
 * running configuration (a zone resized or renamed, or another zone), and
 * then every zone drops the records of credentials it no longer has.
 * Until then a reload may still fail, and the running configuration keeps
 * using its records.
 */

void
ngx_http_sf_oauth_zone_commit(ngx_cycle_t *cycle, ngx_array_t *zones)
{
    ngx_uint_t                 i, n;
    ngx_shm_zone_t           **shm_zone;
    ngx_http_sf_oauth_zone_t  *zone;

    if (!ngx_is_init_cycle(ngx_cycle)) {
        ngx_http_sf_oauth_zone_carry_records(cycle, zones);
    }

    shm_zone = zones->elts;

    for (i = 0; i < zones->nelts; i++) {
        zone = shm_zone[i]->data;

        if (zone->resized && !ngx_is_init_cycle(ngx_cycle)) {
            ngx_http_sf_oauth_zone_carry_primary(zone, zone->resized);
        }

        zone->resized = NULL;

        ngx_shmtx_lock(&zone->shpool->mutex);
        n = ngx_http_sf_oauth_zone_prune_records(zone);
        ngx_http_sf_oauth_zone_check_url(cycle, zone);
        ngx_http_sf_oauth_zone_check_secrets(cycle, zone);
        ngx_shmtx_unlock(&zone->shpool->mutex);

        if (n) {
            ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                          "sf_oauth_zone \"%V\": dropped the records of %ui "
                          "credentials that are no longer configured",
                          &zone->name, n);
        }
    }
}


static ngx_int_t
ngx_http_sf_oauth_zone_attach_cred(ngx_http_sf_oauth_zone_t *zone,
    ngx_http_sf_oauth_cred_t *cred)
{
    ngx_http_sf_oauth_node_t  *node;

    ngx_shmtx_lock(&zone->shpool->mutex);

    node = ngx_http_sf_oauth_zone_find_record(zone, &cred->name);

    if (node && node->moved) {
        /*
         * The record left for the workers before the last reload, which
         * moved the credential away; it comes back: its record is the one
         * in the other zone, copied at the commit (the workers of the
         * configuration before see this one as not theirs any more)
         */
        ngx_queue_remove(&node->queue);
        ngx_explicit_memzero(node, sizeof(ngx_http_sf_oauth_node_t));
        ngx_slab_free_locked(zone->shpool, node);
        node = NULL;
    }

    if (node) {
        /*
         * A record whose token_url alone changed stays whole: its refresh
         * token may be the only one Salesforce still takes, and the
         * workers before the reload keep using it too.  The commit says
         * so (ngx_http_sf_oauth_zone_check_url).
         */

        if (ngx_http_sf_oauth_store_same(cred, node) == 0) {
            ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                          "sf_oauth: credential \"%V\" changed its "
                          "token_url, client_id or refresh token: "
                          "its cached token is dropped", &cred->name);

            ngx_http_sf_oauth_zone_reset_record(cred, node);
            cred->rt.handover = 1;
        }

        cred->rt.node = node;
        cred->rt.fresh = 0;
        ngx_shmtx_unlock(&zone->shpool->mutex);
        return NGX_OK;
    }

    node = ngx_slab_calloc_locked(zone->shpool,
                                  sizeof(ngx_http_sf_oauth_node_t));
    if (node == NULL) {
        ngx_shmtx_unlock(&zone->shpool->mutex);
        return NGX_ERROR;
    }

    node->name_len = cred->name.len;
    ngx_memcpy(node->name, cred->name.data, cred->name.len);

    ngx_http_sf_oauth_zone_reset_record(cred, node);

    ngx_queue_insert_tail(&zone->sh->nodes, &node->queue);

    cred->rt.node = node;
    cred->rt.fresh = 1;

    ngx_shmtx_unlock(&zone->shpool->mutex);

    return NGX_OK;
}


/*
 * With the zone locked: frees the records of credentials that the zone's
 * configuration does not have, their secrets wiped first.  A worker of an
 * older configuration that still points to one finds a record that is not
 * its credential's (ngx_http_sf_oauth_store_owns_node) and leaves it alone.
 * A record that the commit just moved to another zone stays until the
 * next prune: the workers of the configuration before it still serve
 * their requests from it, and its token request in flight ends in it.
 */

static ngx_uint_t
ngx_http_sf_oauth_zone_prune_records(ngx_http_sf_oauth_zone_t *zone)
{
    ngx_uint_t                  i, n;
    ngx_queue_t                *q, *next;
    ngx_http_sf_oauth_node_t   *node;
    ngx_http_sf_oauth_cred_t  **cred;

    n = 0;
    cred = zone->creds.elts;

    for (q = ngx_queue_head(&zone->sh->nodes);
         q != ngx_queue_sentinel(&zone->sh->nodes);
         q = next)
    {
        next = ngx_queue_next(q);
        node = ngx_queue_data(q, ngx_http_sf_oauth_node_t, queue);

        for (i = 0; i < zone->creds.nelts; i++) {
            if (node->name_len == cred[i]->name.len
                && ngx_memcmp(node->name, cred[i]->name.data,
                              node->name_len) == 0)
            {
                break;
            }
        }

        if (i < zone->creds.nelts) {
            continue;
        }

        if (node->moved == 1) {
            node->moved = 2;
            continue;
        }

        ngx_queue_remove(q);
        ngx_explicit_memzero(node, sizeof(ngx_http_sf_oauth_node_t));
        ngx_slab_free_locked(zone->shpool, node);
        n++;
    }

    return n;
}


/*
 * At the commit, with the zone locked: a refresh_token credential whose
 * token_url alone changed (ngx_http_sf_oauth_store_same) keeps its record,
 * kept in the zone or carried over: its refresh token, rotated or got by a
 * connection, is the org's at any endpoint, and the configured one may be
 * rotated out (presenting it would get every token of the app for the
 * user revoked).  The record becomes the new configuration's; the workers
 * before the reload still take it as theirs (rt_fp).  A backoff or hold
 * ends, as when the token_url change dropped the record: the change may
 * be the operator's fix of a wrong token_url.  At the commit, not in
 * zone_init, so that a reload that fails changes nothing.
 */

static void
ngx_http_sf_oauth_zone_check_url(ngx_cycle_t *cycle,
    ngx_http_sf_oauth_zone_t *zone)
{
    ngx_uint_t                  i;
    ngx_http_sf_oauth_node_t   *node;
    ngx_http_sf_oauth_cred_t  **cred;

    cred = zone->creds.elts;

    for (i = 0; i < zone->creds.nelts; i++) {
        node = cred[i]->rt.node;

        if (node == NULL
            || !ngx_http_sf_oauth_store_owns_node(cred[i])
            || ngx_http_sf_oauth_store_same(cred[i], node)
               != NGX_HTTP_SF_OAUTH_SAME_RT)
        {
            continue;
        }

        node->conf_fp = cred[i]->conf_fp;
        node->failures = 0;
        node->backoff_until = 0;
        node->held = 0;

        ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                      "sf_oauth: credential \"%V\" changed its token_url: "
                      "its refresh token is kept", &cred[i]->name);
    }
}


/*
 * At the commit, with the zone locked: a credential whose client secret or
 * private key changed (secret_fp, see ngx_http_sf_oauth_fingerprint_conf)
 * ends its backoff or hold at once, for the change may be the operator's
 * fix of an invalid_client or invalid assertion; the next request makes a
 * token request.  Its token, valid or not, stays: one got with the old
 * secret or key stays valid at Salesforce.  This is done at the commit,
 * not in zone_init, so that a reload that fails leaves the running
 * workers their hold.
 */

static void
ngx_http_sf_oauth_zone_check_secrets(ngx_cycle_t *cycle,
    ngx_http_sf_oauth_zone_t *zone)
{
    ngx_uint_t                  i, held;
    ngx_http_sf_oauth_node_t   *node;
    ngx_http_sf_oauth_cred_t  **cred;

    cred = zone->creds.elts;

    for (i = 0; i < zone->creds.nelts; i++) {
        node = cred[i]->rt.node;

        if (node == NULL
            || !ngx_http_sf_oauth_store_owns_node(cred[i])
            || node->secret_fp == cred[i]->secret_fp)
        {
            continue;
        }

        held = node->state == NGX_HTTP_SF_OAUTH_FAILED
               && (ngx_msec_int_t) (node->backoff_until - ngx_current_msec)
                  > 0;

        node->secret_fp = cred[i]->secret_fp;
        node->failures = 0;
        node->backoff_until = 0;
        node->held = 0;

        ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                      "sf_oauth: credential \"%V\" changed its client "
                      "secret or private key: %s", &cred[i]->name,
                      held ? "its backoff or hold ends, the next request "
                             "makes a token request"
                           : "its cached token is kept");
    }
}


/* with the zone locked: the record of a credential name */

static ngx_http_sf_oauth_node_t *
ngx_http_sf_oauth_zone_find_record(ngx_http_sf_oauth_zone_t *zone,
    ngx_str_t *name)
{
    ngx_queue_t               *q;
    ngx_http_sf_oauth_node_t  *node;

    for (q = ngx_queue_head(&zone->sh->nodes);
         q != ngx_queue_sentinel(&zone->sh->nodes);
         q = ngx_queue_next(q))
    {
        node = ngx_queue_data(q, ngx_http_sf_oauth_node_t, queue);

        if (node->name_len == name->len
            && ngx_memcmp(node->name, name->data, name->len) == 0)
        {
            return node;
        }
    }

    return NULL;
}


/*
 * On a reload that resized the zone, in zone_init: the zone of the same
 * name in the running configuration.  ngx_cycle is still the old cycle,
 * and the old zone stays mapped until the new cycle is committed.
 */

static ngx_http_sf_oauth_zone_t *
ngx_http_sf_oauth_zone_find_old(ngx_shm_zone_t *shm_zone)
{
    ngx_uint_t        i;
    ngx_shm_zone_t   *oshm;
    ngx_list_part_t  *part;

    if (ngx_is_init_cycle(ngx_cycle)) {
        return NULL;
    }

    part = (ngx_list_part_t *) &ngx_cycle->shared_memory.part;
    oshm = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            oshm = part->elts;
            i = 0;
        }

        if (oshm[i].tag != shm_zone->tag
            || oshm[i].shm.name.len != shm_zone->shm.name.len
            || ngx_strncmp(oshm[i].shm.name.data, shm_zone->shm.name.data,
                           shm_zone->shm.name.len)
               != 0)
        {
            continue;
        }

        if (oshm[i].data == NULL || oshm[i].shm.addr == NULL) {
            return NULL;
        }

        return oshm[i].data;
    }
}


/*
 * At the commit, for a zone resized: the fleet's Redis primary as the old
 * zone knew it (its run_id, the keys' place on it, the changes seen and
 * when the last was), so
 * that a reload does not take a new primary for the first one seen
 */

static void
ngx_http_sf_oauth_zone_carry_primary(ngx_http_sf_oauth_zone_t *zone,
    ngx_http_sf_oauth_zone_t *old)
{
    ngx_http_sf_oauth_sh_t  sh;

    if (old->sh == NULL) {
        return;
    }

    ngx_shmtx_lock(&old->shpool->mutex);
    sh = *old->sh;
    ngx_shmtx_unlock(&old->shpool->mutex);

    ngx_shmtx_lock(&zone->shpool->mutex);

    if (zone->sh->run_id_len == 0) {
        ngx_memcpy(zone->sh->run_id, sh.run_id, sh.run_id_len);
        zone->sh->run_id_len = sh.run_id_len;
        zone->sh->place = sh.place;
        zone->sh->failovers = sh.failovers;
        zone->sh->failover_at = sh.failover_at;
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


/*
 * At the commit: the zones of the running configuration, each under its
 * lock.  One that the new configuration does not keep (it was resized or
 * removed) is marked retired: its workers, which never see the new zones,
 * start no token request in it from then on.  Each of its credentials
 * whose record is new in the new configuration gets a copy of the old
 * record: the token, the rotated refresh token, the backoff, and the
 * lease of a token request in flight, whose outcome the old worker posts
 * to the zone "sf_oauth_carry" (see ngx_http_sf_oauth_store_carried).
 * Copy and mark happen under the old zone's lock: an outcome is stored
 * before the copy (and copied), or after the mark (and posted).
 */

static void
ngx_http_sf_oauth_zone_carry_records(ngx_cycle_t *cycle, ngx_array_t *zones)
{
    ngx_uint_t                  i, j;
    ngx_shm_zone_t             *oshm;
    ngx_list_part_t            *part;
    ngx_http_sf_oauth_zone_t   *ozone;
    ngx_http_sf_oauth_cred_t  **ocred, *cred;

    part = (ngx_list_part_t *) &ngx_cycle->shared_memory.part;
    oshm = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return;
            }

            part = part->next;
            oshm = part->elts;
            i = 0;
        }

        ozone = oshm[i].data;

        if (oshm[i].tag != &ngx_http_sf_oauth_module
            || ozone == NULL || ozone->sh == NULL)
        {
            continue;
        }

        ngx_shmtx_lock(&ozone->shpool->mutex);

        if (!ngx_http_sf_oauth_zone_is_kept(cycle, &oshm[i])) {
            ozone->sh->retired = 1;
        }

        ocred = ozone->creds.elts;

        for (j = 0; j < ozone->creds.nelts; j++) {
            cred = ngx_http_sf_oauth_zone_find_cred(zones, &ocred[j]->name);

            if (cred && cred->rt.fresh) {
                ngx_http_sf_oauth_zone_copy_record(cycle, ozone, ocred[j],
                                                   cred);
            }
        }

        ngx_shmtx_unlock(&ozone->shpool->mutex);
    }
}


/* whether the new configuration keeps a zone of the running one */

static ngx_int_t
ngx_http_sf_oauth_zone_is_kept(ngx_cycle_t *cycle, ngx_shm_zone_t *oshm)
{
    ngx_uint_t        i;
    ngx_shm_zone_t   *shm;
    ngx_list_part_t  *part;

    part = &cycle->shared_memory.part;
    shm = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return 0;
            }

            part = part->next;
            shm = part->elts;
            i = 0;
        }

        if (shm[i].shm.addr == oshm->shm.addr) {
            return 1;
        }
    }
}


/* the credential of a name in the new configuration */

static ngx_http_sf_oauth_cred_t *
ngx_http_sf_oauth_zone_find_cred(ngx_array_t *zones, ngx_str_t *name)
{
    ngx_uint_t                  i, j;
    ngx_shm_zone_t            **shm_zone;
    ngx_http_sf_oauth_zone_t   *zone;
    ngx_http_sf_oauth_cred_t  **cred;

    shm_zone = zones->elts;

    for (i = 0; i < zones->nelts; i++) {
        zone = shm_zone[i]->data;
        cred = zone->creds.elts;

        for (j = 0; j < zone->creds.nelts; j++) {
            if (cred[j]->name.len == name->len
                && ngx_memcmp(cred[j]->name.data, name->data, name->len)
                   == 0)
            {
                return cred[j];
            }
        }
    }

    return NULL;
}


/*
 * With the old zone locked: the old record of a credential into its new
 * one, unless the credential changed.  No worker of the new configuration
 * runs yet, but workers of the running one may use the new zone if it is
 * kept: it is locked too.
 */

static void
ngx_http_sf_oauth_zone_copy_record(ngx_cycle_t *cycle,
    ngx_http_sf_oauth_zone_t *ozone, ngx_http_sf_oauth_cred_t *ocred,
    ngx_http_sf_oauth_cred_t *cred)
{
    ngx_pid_t                  pid;
    ngx_queue_t                queue;
    ngx_http_sf_oauth_zone_t  *zone;
    ngx_http_sf_oauth_node_t  *onode, *node;

    zone = cred->shm_zone->data;
    onode = ocred->rt.node;

    if (onode == NULL || zone->shpool == ozone->shpool
        || !ngx_http_sf_oauth_store_owns_node(ocred))
    {
        return;
    }

    /* one source only */
    cred->rt.fresh = 0;

    /* one whose token_url alone changed is copied: see zone_check_url */

    if (ngx_http_sf_oauth_store_same(cred, onode) == 0) {
        ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                      "sf_oauth: credential \"%V\" changed its "
                      "token_url, client_id or refresh token: "
                      "its cached token is dropped", &cred->name);
        return;
    }

    pid = onode->lease_pid;

    if (pid
        && ((ngx_msec_int_t) (onode->lease_deadline - ngx_current_msec) <= 0
            || (kill(pid, 0) == -1 && ngx_errno == NGX_ESRCH)))
    {
        pid = 0;
    }

    ngx_shmtx_lock(&zone->shpool->mutex);

    node = cred->rt.node;
    queue = node->queue;
    ngx_memcpy(node, onode, sizeof(ngx_http_sf_oauth_node_t));
    node->queue = queue;

    /*
     * A lease in flight is kept: the new workers wait for its outcome,
     * which the old worker posts to the zone "sf_oauth_carry", or, if it
     * ends without one, take the refresh over as a dead owner's.  The old
     * record is moved: no token request starts in it any more.
     */

    node->lease_pid = pid;
    node->carried = (pid != 0);
    node->moved = 0;
    cred->rt.carried = (pid != 0);
    cred->rt.relay = 1;
    onode->moved = 1;

    ngx_shmtx_unlock(&zone->shpool->mutex);

    ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                  "sf_oauth: credential \"%V\": its record was carried over "
                  "from the old sf_oauth_zone \"%V\" to the new "
                  "sf_oauth_zone \"%V\"", &cred->name, &ozone->name,
                  &zone->name);

    if (pid) {
        ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                      "sf_oauth: credential \"%V\": the token request of "
                      "process %P was in flight when this reload moved its "
                      "record from the old sf_oauth_zone \"%V\" to the new "
                      "sf_oauth_zone \"%V\": the new worker processes wait "
                      "for its outcome", &cred->name, pid, &ozone->name,
                      &zone->name);
    }
}


static void
ngx_http_sf_oauth_zone_reset_record(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node)
{
    node->conf_fp = cred->conf_fp;
    node->rt_fp = cred->rt_fp;
    node->secret_fp = cred->secret_fp;
    node->state = NGX_HTTP_SF_OAUTH_EMPTY;
    node->generation++;
    node->token_len = 0;
    node->url_len = 0;
    node->org_id_len = 0;
    node->user_id_len = 0;
    node->identity_known = 0;
    node->error_len = 0;
    node->failures = 0;
    node->backoff_until = 0;
    node->held = 0;
    node->wanted = 0;
    node->carried = 0;
    node->issued_at = 0;
    node->token_ms = 0;
    node->token_adopted = 0;

    /*
     * A lease of an old worker is left alone: its answer is discarded,
     * and the new workers refresh once it is over (store_handover).
     */

    ngx_explicit_memzero(node->token, sizeof(node->token));
    ngx_explicit_memzero(node->refresh, sizeof(node->refresh));

    node->refresh_len = cred->refresh_token.len;
    ngx_memcpy(node->refresh, cred->refresh_token.data,
               cred->refresh_token.len);
}
