
/*
 * The zone "sf_oauth_carry": the outcome of a token request that was in
 * flight when a reload moved its record to another zone (a zone resized
 * or renamed, a credential moved to another zone).  nginx maps a new or
 * resized zone in the master only, after the old workers were forked, and
 * unmaps the old one once the new cycle runs: the old worker that makes
 * the token request never sees the new zone, the new workers never see
 * the old one.  This zone is the module's own, of a size that never
 * changes, so every reload hands it over and both see it.
 *
 * The old worker posts a copy of its record, the outcome in it, keyed by
 * the credential's name and its lease (pid and deadline); the new workers
 * find it by the lease that the commit copied into the new record.  The
 * other way, an old worker whose request needs a new token posts a wish,
 * and the new workers answer it with a copy of their record.  What is
 * done with them is the store's (ngx_http_sf_oauth_store_carried,
 * ngx_http_sf_oauth_store_relay).  A slot is free again
 * NGX_HTTP_SF_OAUTH_CARRY_TTL after its post, its secrets wiped.
 */


#include "ngx_http_sf_oauth.h"


static ngx_int_t ngx_http_sf_oauth_carry_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_shm_zone_t *ngx_http_sf_oauth_carry_zone(void);
static ngx_http_sf_oauth_carry_slot_t *ngx_http_sf_oauth_carry_find(
    ngx_http_sf_oauth_carry_sh_t *sh, ngx_uint_t kind,
    ngx_http_sf_oauth_node_t *node, ngx_pid_t pid, ngx_msec_t deadline,
    ngx_uint_t free);


#define NGX_HTTP_SF_OAUTH_CARRY_ZONE_SIZE  (1024 * 1024)


static ngx_str_t  ngx_http_sf_oauth_carry_zone_name =
    ngx_string("sf_oauth_carry");


/* for the first sf_oauth_zone: the carry zone, one for every zone */

char *
ngx_http_sf_oauth_carry_conf(ngx_conf_t *cf)
{
    ngx_shm_zone_t                 *shm_zone;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    smcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_sf_oauth_module);

    if (smcf->carry_zone) {
        return NGX_CONF_OK;
    }

    /*
     * A tag of its own, as the zone "sf_oauth_connect": the token zones'
     * code walks every zone tagged with the module, and this is not one
     */
    shm_zone = ngx_shared_memory_add(cf, &ngx_http_sf_oauth_carry_zone_name,
                                     NGX_HTTP_SF_OAUTH_CARRY_ZONE_SIZE,
                                     &ngx_http_sf_oauth_carry_zone_name);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_sf_oauth_carry_init_zone;
    smcf->carry_zone = shm_zone;

    return NGX_CONF_OK;
}


/* in the master: a new zone gets its empty slots; a reload keeps them */

static ngx_int_t
ngx_http_sf_oauth_carry_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t               *shpool;
    ngx_http_sf_oauth_carry_sh_t  *sh;

    if (data) {
        shm_zone->data = data;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        shm_zone->data = shpool->data;
        return NGX_OK;
    }

    sh = ngx_slab_calloc(shpool, sizeof(ngx_http_sf_oauth_carry_sh_t));
    if (sh == NULL) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "sf_oauth: the zone \"sf_oauth_carry\" of %uz bytes "
                      "cannot hold its %d slots of %uz bytes",
                      shm_zone->shm.size, NGX_HTTP_SF_OAUTH_CARRY_SLOTS,
                      sizeof(ngx_http_sf_oauth_carry_slot_t));
        return NGX_ERROR;
    }

    shpool->data = sh;
    shm_zone->data = sh;

    return NGX_OK;
}


/* in a worker: the running configuration's carry zone, if it has one */

static ngx_shm_zone_t *
ngx_http_sf_oauth_carry_zone(void)
{
    ngx_http_sf_oauth_main_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_sf_oauth_module);

    if (smcf == NULL || smcf->carry_zone == NULL
        || smcf->carry_zone->data == NULL)
    {
        return NULL;
    }

    return smcf->carry_zone;
}


/*
 * With a record locked: a copy of it in the slot of KIND for its name (and
 * for an outcome, the lease PID and DEADLINE that the commit copied into
 * the new record), replacing the one there.  NGX_ERROR: no free slot,
 * logged.
 */

ngx_int_t
ngx_http_sf_oauth_carry_post(ngx_uint_t kind, ngx_http_sf_oauth_node_t *node,
    ngx_pid_t pid, ngx_msec_t deadline)
{
    ngx_shm_zone_t                  *shm_zone;
    ngx_slab_pool_t                 *shpool;
    ngx_http_sf_oauth_carry_slot_t  *slot;

    shm_zone = ngx_http_sf_oauth_carry_zone();
    if (shm_zone == NULL) {
        return NGX_ERROR;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    slot = ngx_http_sf_oauth_carry_find(shm_zone->data, kind, node, pid,
                                        deadline, 1);

    if (slot == NULL) {
        ngx_shmtx_unlock(&shpool->mutex);

        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%*s\": the zone "
                      "\"sf_oauth_carry\" has no free slot for %s (%d in "
                      "a minute)", node->name_len, node->name,
                      kind == NGX_HTTP_SF_OAUTH_CARRY_OUTCOME
                      ? "the outcome of a token request that a reload "
                        "moved to another zone: the new worker processes "
                        "refresh after its lease"
                      : "a token between the worker processes before a "
                        "reload and after it: the request that needs it "
                        "waits for it, up to the credential's timeout",
                      NGX_HTTP_SF_OAUTH_CARRY_SLOTS);
        return NGX_ERROR;
    }

    ngx_memcpy(&slot->rec, node, sizeof(ngx_http_sf_oauth_node_t));
    ngx_queue_init(&slot->rec.queue);
    slot->kind = kind;
    slot->pid = pid;
    slot->deadline = deadline;
    slot->expires = ngx_current_msec + NGX_HTTP_SF_OAUTH_CARRY_TTL;

    ngx_shmtx_unlock(&shpool->mutex);

    return NGX_OK;
}


/*
 * With a record locked: the copy in the slot of KIND for its name (and
 * PID and DEADLINE), into OUT (NGX_OK), or NGX_DECLINED while there is
 * none.  With DROP, the slot is freed.
 */

ngx_int_t
ngx_http_sf_oauth_carry_take(ngx_uint_t kind, ngx_http_sf_oauth_node_t *node,
    ngx_pid_t pid, ngx_msec_t deadline, ngx_http_sf_oauth_node_t *out,
    ngx_uint_t drop)
{
    ngx_shm_zone_t                  *shm_zone;
    ngx_slab_pool_t                 *shpool;
    ngx_http_sf_oauth_carry_slot_t  *slot;

    shm_zone = ngx_http_sf_oauth_carry_zone();
    if (shm_zone == NULL) {
        return NGX_DECLINED;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    slot = ngx_http_sf_oauth_carry_find(shm_zone->data, kind, node, pid,
                                        deadline, 0);

    if (slot && out) {
        ngx_memcpy(out, &slot->rec, sizeof(ngx_http_sf_oauth_node_t));
    }

    if (slot && drop) {
        ngx_explicit_memzero(slot, sizeof(ngx_http_sf_oauth_carry_slot_t));
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return slot ? NGX_OK : NGX_DECLINED;
}


/*
 * With the carry zone locked: the slot of KIND, the record's name, PID and
 * DEADLINE; with FREE, a free one if there is none.  Expired slots are
 * wiped on the way: their secrets go once they are of no use.
 */

static ngx_http_sf_oauth_carry_slot_t *
ngx_http_sf_oauth_carry_find(ngx_http_sf_oauth_carry_sh_t *sh,
    ngx_uint_t kind, ngx_http_sf_oauth_node_t *node, ngx_pid_t pid,
    ngx_msec_t deadline, ngx_uint_t free)
{
    ngx_uint_t                       i;
    ngx_http_sf_oauth_carry_slot_t  *slot, *empty;

    empty = NULL;

    for (i = 0; i < NGX_HTTP_SF_OAUTH_CARRY_SLOTS; i++) {
        slot = &sh->slot[i];

        if (slot->kind
            && (ngx_msec_int_t) (slot->expires - ngx_current_msec) <= 0)
        {
            ngx_explicit_memzero(slot, sizeof(ngx_http_sf_oauth_carry_slot_t));
        }

        if (slot->kind == 0) {
            if (empty == NULL) {
                empty = slot;
            }

            continue;
        }

        if (slot->kind == kind && slot->pid == pid
            && slot->deadline == deadline
            && slot->rec.name_len == node->name_len
            && ngx_memcmp(slot->rec.name, node->name, node->name_len) == 0)
        {
            return slot;
        }
    }

    return free ? empty : NULL;
}
