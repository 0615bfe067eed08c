
/*
 * One token for a fleet of nodes (sf_oauth_zone redis=NAME).
 *
 * Requests still read only the node's own zone.  Redis holds, per
 * credential of the zone:
 *
 *   PREFIX ZONE:CRED:gen     the fleet generation, an integer
 *   PREFIX ZONE:CRED:record  the newest token and refresh token, encrypted
 *                            and authenticated with the zone's key,
 *                            bound to zone, credential and generation
 *   PREFIX ZONE:CRED:lease   the refresh lease: "host:pid:random", with
 *                            an expiry longer than the token request
 *   PREFIX ZONE:CRED:keyfp   the fingerprint of the key that encrypted the
 *                            record (8 hex digits of its SHA-256)
 *
 * and a channel, PREFIX events, where a new generation is announced.
 *
 * A worker that holds its node's lease asks the fleet (a Lua script, so
 * that each step is atomic): a generation newer than the one its token had
 * is adopted, with no token request; otherwise it takes the fleet's lease
 * and refreshes with the newest refresh token there is, renewing the
 * lease every third of its time; or it waits for the node that holds it.
 * The outcome is written back with a compare-and-set on the generation, so
 * that no node overwrites a newer token, and announced.  Every node copies
 * a new generation into its zone on the announcement, and within a second
 * without one (a periodic read: pub/sub loses messages across reconnects).
 *
 * A connection from the console (a new refresh token chain the operator
 * chose, perhaps because the old one was revoked) is the exception: it
 * holds no fleet lease, and a newer generation found when it is written
 * (another node refreshed the old chain meanwhile) is not adopted; the
 * connection's record is written again over it, with the same
 * compare-and-set, and is the fleet's newest generation.
 *
 * A record that does not decrypt, beside the fingerprint of another key
 * than the zone's, tells a fleet whose nodes have different keys: this
 * node cannot know the newest refresh token, and its own may have been
 * rotated out.  It makes no token request (KEY) until a record decrypts,
 * but for a generation whose refresh token it has itself (the key was
 * changed on it, and the others follow).
 *
 * Redis replicates asynchronously: a new primary (a failover, a restart
 * that lost its data, told by the server's run_id) may never have seen a
 * lease the old one granted.  For a lease's time to live after the change
 * a node takes none, unless a newer generation is written back meanwhile
 * (the quarantine); a lost write-back is put back by the periodic read.
 * While no primary answers (unreachable, READONLY), a refresh waits for
 * one up to failover_wait before redis_down applies.
 *
 * This file knows none of its callers: the refresh hears the answers of
 * acquire and store through a callback.
 *
 * It is one concern, though it is over a thousand lines: the fleet's
 * protocol, each step a script sent and its reply read (acquire, renew,
 * store, restore, release, sync, the channel's messages), with the
 * decoding of a record and the key check that every reply needs.  The
 * steps share the per-credential fleet state and must be read together
 * to see that no node overwrites a newer token or reuses a rotated-out
 * refresh token.  The Redis connection is ngx_http_sf_oauth_redis.c; what
 * the fleet keeps in the zone, ngx_http_sf_oauth_store_fleet.c.
 */


#include "ngx_http_sf_oauth.h"

#include <hiredis/hiredis.h>


/* how often a node reads the generations, and a waiter asks again, ms */
#define NGX_HTTP_SF_OAUTH_FLEET_SYNC      1000
#define NGX_HTTP_SF_OAUTH_FLEET_POLL      100

/* the SYNC script's answer when the generation in Redis is not one */
#define NGX_HTTP_SF_OAUTH_FLEET_BAD_GEN   2


/* how often a connection is written again over a newer generation */
#define NGX_HTTP_SF_OAUTH_FLEET_REBASES   8


/*
 * An acquire or a store.  A connection's store keeps its record
 * ("connected"), to write it again over a newer generation ("over") that
 * another node stored meanwhile.
 */
typedef struct {
    ngx_http_sf_oauth_cred_t      *cred;
    ngx_http_sf_oauth_fleet_pt     handler;
    ngx_uint_t                     base;
    ngx_http_sf_oauth_node_t      *connected;
    ngx_uint_t                     over;
    ngx_uint_t                     first;
    ngx_uint_t                     rebases;
    /* an acquire: Redis's refusal said, the quarantine said (debug) */
    ngx_uint_t                     refused;
    ngx_uint_t                     quarantined;
} ngx_http_sf_oauth_fleet_op_t;


static ngx_int_t ngx_http_sf_oauth_fleet_eval(ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *script, char *action, ngx_uint_t nkeys, const char **keys,
    ngx_uint_t nargs, ngx_str_t *args, ngx_http_sf_oauth_reply_pt handler,
    void *data);
static void ngx_http_sf_oauth_fleet_ask(ngx_http_sf_oauth_fleet_op_t *op);
static ngx_int_t ngx_http_sf_oauth_fleet_record(
    ngx_http_sf_oauth_node_t *copy);
static u_char *ngx_http_sf_oauth_fleet_unwritten(
    ngx_http_sf_oauth_cred_t *cred, ngx_pool_t *pool, ngx_uint_t *base,
    size_t *len);
static void ngx_http_sf_oauth_fleet_asked(void *reply, void *data);
static ngx_uint_t ngx_http_sf_oauth_fleet_hold(
    ngx_http_sf_oauth_fleet_op_t *op, ngx_msec_t poll);
static void ngx_http_sf_oauth_fleet_extend(ngx_http_sf_oauth_cred_t *cred,
    ngx_msec_t wait);
static ngx_uint_t ngx_http_sf_oauth_fleet_no_primary(redisReply *r);
static void ngx_http_sf_oauth_fleet_again(ngx_event_t *ev);
static ngx_uint_t ngx_http_sf_oauth_fleet_overtaken(
    ngx_http_sf_oauth_fleet_op_t *op);
static void ngx_http_sf_oauth_fleet_renewal(ngx_event_t *ev);
static void ngx_http_sf_oauth_fleet_written(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t answer, ngx_http_sf_oauth_node_t *rec, ngx_uint_t generation);
static void ngx_http_sf_oauth_fleet_renew(ngx_http_sf_oauth_cred_t *cred);
static void ngx_http_sf_oauth_fleet_renewed(void *reply, void *data);
static void ngx_http_sf_oauth_fleet_store_op(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_fleet_pt handler, ngx_uint_t connected);
static ngx_int_t ngx_http_sf_oauth_fleet_write(
    ngx_http_sf_oauth_fleet_op_t *op, ngx_http_sf_oauth_node_t *rec,
    ngx_uint_t base);
static void ngx_http_sf_oauth_fleet_stored(void *reply, void *data);
static ngx_uint_t ngx_http_sf_oauth_fleet_rebase(
    ngx_http_sf_oauth_fleet_op_t *op, ngx_uint_t gen);
static void ngx_http_sf_oauth_fleet_op_free(ngx_http_sf_oauth_fleet_op_t *op);
static void ngx_http_sf_oauth_fleet_sync(ngx_http_sf_oauth_cred_t *cred);
static void ngx_http_sf_oauth_fleet_restore(ngx_http_sf_oauth_cred_t *cred);
static void ngx_http_sf_oauth_fleet_synced_again(void *reply, void *data);
static void ngx_http_sf_oauth_fleet_read(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t fleet, ngx_http_sf_oauth_reply_pt handler);
static void ngx_http_sf_oauth_fleet_synced(void *reply, void *data);
static void ngx_http_sf_oauth_fleet_sync_all(ngx_event_t *ev);
static void ngx_http_sf_oauth_fleet_message(void *reply, void *data);
static void ngx_http_sf_oauth_fleet_ready(ngx_http_sf_oauth_redis_t *rd,
    ngx_uint_t subscriber, void *data);
static void ngx_http_sf_oauth_fleet_primary(ngx_http_sf_oauth_redis_t *rd,
    ngx_http_sf_oauth_cred_t *cred);
static ngx_int_t ngx_http_sf_oauth_fleet_decode(
    ngx_http_sf_oauth_cred_t *cred, ngx_uint_t generation, redisReply *blob,
    redisReply *fp, ngx_http_sf_oauth_node_t *rec);
static void ngx_http_sf_oauth_fleet_error(ngx_http_sf_oauth_cred_t *cred,
    const char *what, redisReply *r);
static ngx_uint_t ngx_http_sf_oauth_fleet_refused(
    ngx_http_sf_oauth_cred_t *cred, ngx_uint_t generation, ngx_int_t rc,
    redisReply *fp);
static void ngx_http_sf_oauth_fleet_mismatch(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, redisReply *fp);
static ngx_int_t ngx_http_sf_oauth_fleet_adopt(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, redisReply *blob, redisReply *fp,
    ngx_http_sf_oauth_node_t *rec);
static void ngx_http_sf_oauth_fleet_context(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, u_char *buf, ngx_str_t *context);
static ngx_str_t *ngx_http_sf_oauth_fleet_key(ngx_http_sf_oauth_cred_t *cred,
    const char *what, ngx_str_t *key);
static void ngx_http_sf_oauth_fleet_new_owner(ngx_http_sf_oauth_cred_t *cred);
static ngx_int_t ngx_http_sf_oauth_fleet_number(redisReply *r,
    ngx_uint_t *n);
static void ngx_http_sf_oauth_fleet_noop(void *reply, void *data);


/*
 * The generation as the scripts read it: 0 when there is none, -1 when
 * the value is not a generation (bad data: it counts as none, and the
 * periodic read reports it).  A node's own generation is never older than
 * what Redis held when the node read it, so Redis holding less than a
 * node knows means that Redis lost its data (FLUSHALL, a restart without
 * persistence): a new generation is then counted from the node's.
 */
#define NGX_HTTP_SF_OAUTH_FLEET_GEN_LUA                                       \
    "local function gen(k) "                                                  \
    "  local v = redis.call('GET', k) "                                       \
    "  if not v then return 0 end "                                           \
    "  v = tonumber(v) "                                                      \
    "  if v == nil or v < 0 or v >= 2^52 or v % 1 ~= 0 then return -1 end "   \
    "  return v end "

/*
 * A value that the scripts return, the record, a lease owner or a key's
 * fingerprint: its first bytes only, as many as a good one may have and
 * one more, so that a reply stays small whatever Redis holds, and a value
 * too long is told by its length.  As GET but for a key that is not
 * there: ''.
 */
#define ngx_http_sf_oauth_fleet_lua_str(n)  #n
#define ngx_http_sf_oauth_fleet_lua_num(n)  ngx_http_sf_oauth_fleet_lua_str(n)

#define NGX_HTTP_SF_OAUTH_FLEET_CUT_LUA                                       \
    "local function record(k) "                                               \
    "  return redis.call('GETRANGE', k, 0, "                                  \
    ngx_http_sf_oauth_fleet_lua_num(NGX_HTTP_SF_OAUTH_RECORD_MAX) ") end "    \
    "local function owner(k) "                                                \
    "  return redis.call('GETRANGE', k, 0, "                                  \
    ngx_http_sf_oauth_fleet_lua_num(NGX_HTTP_SF_OAUTH_OWNER_MAX) ") end "     \
    "local function keyfp(k) "                                                \
    "  return redis.call('GETRANGE', k, 0, 63) end "

/*
 * KEYS: gen, lease, record, keyfp; ARGV: owner, ttl ms, the generation
 * known, whether the lease may be taken ('0' in the quarantine after a
 * change of primary), and the node's token that Redis never got ('' if
 * none) with the generation it was got over, its key's fingerprint,
 * channel and message.  {1, gen, record, keyfp}: a newer generation, or
 * the node's token, written as the next one over a generation no newer
 * than the one it was got over; {2, base, record, keyfp}: the lease is
 * taken, to be written over "base" (the record is '' when Redis holds an
 * older generation than the node: the node's refresh token is newer); {3,
 * gen, owner, ''}: another holds it, or it may not be taken (the owner ''
 * if none).
 */
static ngx_str_t  ngx_http_sf_oauth_fleet_acquire_lua = ngx_string(
    NGX_HTTP_SF_OAUTH_FLEET_GEN_LUA
    NGX_HTTP_SF_OAUTH_FLEET_CUT_LUA
    "local g = math.max(gen(KEYS[1]), 0) "
    "local k = tonumber(ARGV[3]) "
    "if ARGV[5] ~= '' and g <= tonumber(ARGV[6]) then "
    "  local w = tonumber(ARGV[6]) + 1 "
    "  redis.call('SET', KEYS[3], ARGV[5]) "
    "  redis.call('SET', KEYS[4], ARGV[7]) "
    "  redis.call('SET', KEYS[1], w) "
    "  redis.call('PUBLISH', ARGV[8], ARGV[9]) "
    "  return {1, w, ARGV[5], ARGV[7]} end "
    "if g > k then "
    "  return {1, g, record(KEYS[3]), keyfp(KEYS[4])} end "
    "if ARGV[4] == '1' "
    "  and redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then "
    "  if g < k then return {2, k, '', ''} end "
    "  return {2, g, record(KEYS[3]), keyfp(KEYS[4])} end "
    "return {3, g, owner(KEYS[2]), ''}");

/* KEYS: lease; ARGV: owner, ttl ms */
static ngx_str_t  ngx_http_sf_oauth_fleet_renew_lua = ngx_string(
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "  return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end "
    "return 0");

/* KEYS: lease; ARGV: owner */
static ngx_str_t  ngx_http_sf_oauth_fleet_release_lua = ngx_string(
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "  return redis.call('DEL', KEYS[1]) end "
    "return 0");

/*
 * KEYS: gen, record, lease, keyfp; ARGV: the generation written over, the
 * record, owner, channel, message, the key's fingerprint.  {5, gen, mine}:
 * stored as gen, "mine" when the lease was still the owner's; {6, gen}: a
 * newer one is there.  An older generation than the one written over
 * (Redis lost its data) is overwritten.
 */
static ngx_str_t  ngx_http_sf_oauth_fleet_store_lua = ngx_string(
    NGX_HTTP_SF_OAUTH_FLEET_GEN_LUA
    "local g = gen(KEYS[1]) "
    "local b = tonumber(ARGV[1]) "
    "if g > b then return {6, g} end "
    "redis.call('SET', KEYS[2], ARGV[2]) "
    "redis.call('SET', KEYS[4], ARGV[6]) "
    "redis.call('SET', KEYS[1], b + 1) "
    "local mine = 0 "
    "if redis.call('GET', KEYS[3]) == ARGV[3] then "
    "  redis.call('DEL', KEYS[3]) mine = 1 end "
    "redis.call('PUBLISH', ARGV[4], ARGV[5]) "
    "return {5, b + 1, mine}");

/*
 * KEYS: gen, record, keyfp; ARGV: a generation, its record, channel,
 * message, the key's fingerprint.  Redis lost what it held (a restart
 * without persistence): the node puts its generation back, unless a node
 * put back a newer one.
 */
static ngx_str_t  ngx_http_sf_oauth_fleet_restore_lua = ngx_string(
    NGX_HTTP_SF_OAUTH_FLEET_GEN_LUA
    "local g = gen(KEYS[1]) "
    "if g >= tonumber(ARGV[1]) then return 0 end "
    "redis.call('SET', KEYS[2], ARGV[2]) "
    "redis.call('SET', KEYS[3], ARGV[5]) "
    "redis.call('SET', KEYS[1], ARGV[1]) "
    "redis.call('PUBLISH', ARGV[3], ARGV[4]) "
    "return 1");

/*
 * KEYS: gen, record, lease, keyfp; ARGV: the generation known.  {1, gen,
 * record, owner, keyfp}: a newer generation; {0, gen, '', owner, ''}:
 * none; {2, 0, '', owner, ''}: the generation in Redis is not one.
 */
static ngx_str_t  ngx_http_sf_oauth_fleet_sync_lua = ngx_string(
    NGX_HTTP_SF_OAUTH_FLEET_GEN_LUA
    NGX_HTTP_SF_OAUTH_FLEET_CUT_LUA
    "local g = gen(KEYS[1]) "
    "local o = owner(KEYS[3]) "
    "if g < 0 then return {2, 0, '', o, ''} end "
    "if g > tonumber(ARGV[1]) then "
    "  return {1, g, record(KEYS[2]), o, keyfp(KEYS[4])} end "
    "return {0, g, '', o, ''}");


static ngx_event_t  ngx_http_sf_oauth_fleet_sync_event;

ngx_str_t  ngx_http_sf_oauth_fleet_down =
    ngx_string("Redis is unreachable and redis_down is fail: no token "
               "request is made");

ngx_str_t  ngx_http_sf_oauth_fleet_key_error =
    ngx_string("the fleet's token in Redis is encrypted with another key "
               "than this node's sf_oauth_zone key=: no token request is "
               "made until every node of the fleet has the same key (see "
               "the error log)");


/* a worker's connections and its periodic read, for the zones with redis= */

ngx_int_t
ngx_http_sf_oauth_fleet_init(ngx_cycle_t *cycle)
{
    ngx_uint_t                      i, j, any;
    ngx_shm_zone_t                **zp;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_sf_oauth_zone_t       *zone;
    ngx_http_sf_oauth_redis_t     **rd;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_sf_oauth_module);

    rd = smcf->redis.elts;
    zp = smcf->zones.elts;
    any = 0;

    for (i = 0; i < smcf->redis.nelts; i++) {

        for (j = 0; j < smcf->zones.nelts; j++) {
            zone = zp[j]->data;

            if (zone->redis == rd[i] && zone->key_error == NULL) {
                break;
            }
        }

        if (j == smcf->zones.nelts) {
            continue;
        }

        if (ngx_http_sf_oauth_redis_init(rd[i], cycle,
                                         ngx_http_sf_oauth_fleet_message,
                                         ngx_http_sf_oauth_fleet_ready, rd[i])
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        any = 1;
    }

    if (!any) {
        return NGX_OK;
    }

    cred = smcf->creds.elts;

    for (i = 0; i < smcf->creds.nelts; i++) {
        ngx_http_sf_oauth_timer_init(&cred[i]->rt.fleet_timer,
                                     ngx_http_sf_oauth_fleet_again,
                                     cycle->log);
    }

    ngx_http_sf_oauth_timer_init(&ngx_http_sf_oauth_fleet_sync_event,
                                 ngx_http_sf_oauth_fleet_sync_all,
                                 cycle->log);

    ngx_add_timer(&ngx_http_sf_oauth_fleet_sync_event,
                  NGX_HTTP_SF_OAUTH_FLEET_SYNC);

    return NGX_OK;
}


void
ngx_http_sf_oauth_fleet_exit(ngx_cycle_t *cycle)
{
    ngx_uint_t                      i;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_sf_oauth_redis_t     **rd;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_sf_oauth_module);

    cred = smcf->creds.elts;

    for (i = 0; i < smcf->creds.nelts; i++) {
        if (cred[i]->rt.fleet_timer.timer_set) {
            ngx_del_timer(&cred[i]->rt.fleet_timer);
        }
    }

    if (ngx_http_sf_oauth_fleet_sync_event.timer_set) {
        ngx_del_timer(&ngx_http_sf_oauth_fleet_sync_event);
    }

    rd = smcf->redis.elts;

    for (i = 0; i < smcf->redis.nelts; i++) {
        ngx_http_sf_oauth_redis_exit(rd[i]);
    }
}


/* whether the credential's zone is in a fleet */

ngx_uint_t
ngx_http_sf_oauth_fleet_on(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;

    return zone->redis != NULL && zone->key_error == NULL
           && zone->redis->cmd != NULL;
}


ngx_uint_t
ngx_http_sf_oauth_fleet_connected(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;

    return zone->redis && ngx_http_sf_oauth_redis_ready(zone->redis);
}


/*
 * How long (ms) the credential still takes no fleet lease after its
 * node saw the Redis primary change: a lease's time to live (the one the
 * lease script is given), unless a newer generation was written since;
 * 0: none
 */

ngx_msec_t
ngx_http_sf_oauth_fleet_quarantine(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;

    if (zone->redis == NULL) {
        return 0;
    }

    return ngx_http_sf_oauth_store_fleet_quarantine(cred,
                               cred->timeout + NGX_HTTP_SF_OAUTH_LEASE_SLACK);
}


/*
 * How long (ms) is left of failover_wait in the node's Redis outage
 * (unreachable, or refusing the lease script); 0: no outage, the wait is
 * over, or failover_wait is 0
 */

ngx_msec_t
ngx_http_sf_oauth_fleet_failover_left(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_msec_t                 since;
    ngx_msec_int_t             left;
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;

    if (zone->redis == NULL || zone->redis->failover_wait == 0) {
        return 0;
    }

    since = ngx_http_sf_oauth_store_fleet_down(cred, 0, 0, NULL);

    if (since == 0) {
        return 0;
    }

    left = (ngx_msec_int_t) (since + zone->redis->failover_wait
                             - ngx_current_msec);

    return left > 0 ? (ngx_msec_t) left : 0;
}


/*
 * The fleet's answer for a worker that holds its node's lease, to
 * replace the token of fleet generation "known": NEWER (adopted into the
 * zone already), LEASE (the record holds the newest refresh token, if
 * any), DOWN, or HELD when another node's refresh did not end within the
 * credential's timeout.
 */

void
ngx_http_sf_oauth_fleet_acquire(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t known, ngx_uint_t unsynced, ngx_http_sf_oauth_fleet_pt handler)
{
    ngx_http_sf_oauth_fleet_op_t  *op;

    op = ngx_alloc(sizeof(ngx_http_sf_oauth_fleet_op_t), ngx_cycle->log);
    if (op == NULL) {
        handler(cred, NGX_HTTP_SF_OAUTH_FLEET_DOWN, NULL, 0);
        return;
    }

    op->cred = cred;
    op->handler = handler;
    op->base = known;
    op->connected = NULL;
    op->refused = 0;
    op->quarantined = 0;

    /* long enough for a dead node's lease to expire, and a bit */

    cred->rt.fleet_known = known;
    cred->rt.fleet_distrust = unsynced;
    cred->rt.fleet_deadline = ngx_current_msec + cred->timeout
                           + 2 * NGX_HTTP_SF_OAUTH_LEASE_SLACK;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": asking the fleet for its "
                   "lease, over generation %ui%s", &cred->name, known,
                   unsynced ? " (a token got while Redis was unreachable)"
                            : "");

    ngx_http_sf_oauth_fleet_ask(op);
}


/*
 * A copy of the zone's record as the fleet's record is to hold it: a
 * valid token as it is; one that Salesforce rejected since, without its
 * access token (ngx_http_sf_oauth_codec_encode writes none for a record
 * not valid) when there is a refresh token, which is what matters in it,
 * and a node that takes it refreshes with that at once rather than try
 * the dead access token first; otherwise as if valid, the access token
 * being all there is.  NGX_DECLINED: nothing to write.
 */

static ngx_int_t
ngx_http_sf_oauth_fleet_record(ngx_http_sf_oauth_node_t *copy)
{
    if (copy->state == NGX_HTTP_SF_OAUTH_VALID || copy->refresh_len) {
        return NGX_OK;
    }

    if (copy->token_len == 0) {
        return NGX_DECLINED;
    }

    copy->state = NGX_HTTP_SF_OAUTH_VALID;

    return NGX_OK;
}


/*
 * The zone's token that Redis never got, as a record bound to the
 * generation after "base", the one it was got over; NULL if there is
 * none.  Its access token may be dead already: the refresh token is what
 * matters, and a record holds both (see ngx_http_sf_oauth_fleet_store_op).
 */

static u_char *
ngx_http_sf_oauth_fleet_unwritten(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_uint_t *base, size_t *len)
{
    u_char                     *blob;
    u_char                      ctx[NGX_HTTP_SF_OAUTH_ZONE_NAME_MAX
                                    + NGX_HTTP_SF_OAUTH_NAME_MAX
                                    + NGX_INT_T_LEN + 2];
    ngx_str_t                   context;
    ngx_http_sf_oauth_zone_t   *zone;
    ngx_http_sf_oauth_node_t   *copy;

    zone = cred->shm_zone->data;
    blob = NULL;

    copy = ngx_alloc(sizeof(ngx_http_sf_oauth_node_t), ngx_cycle->log);
    if (copy == NULL) {
        return NULL;
    }

    ngx_http_sf_oauth_store_snapshot(cred, copy);

    if (copy->fleet_dirty && ngx_http_sf_oauth_fleet_record(copy) == NGX_OK)
    {
        *base = copy->fleet_generation;

        ngx_http_sf_oauth_fleet_context(cred, *base + 1, ctx, &context);

        blob = ngx_http_sf_oauth_codec_encode(zone->key, &context, copy, 1,
                                              pool, len);

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": this node's token "
                       "got over fleet generation %ui is not in Redis: it "
                       "goes with the lease's question", &cred->name, *base);
    }

    ngx_explicit_memzero(copy, sizeof(ngx_http_sf_oauth_node_t));
    ngx_free(copy);

    return blob;
}


static void
ngx_http_sf_oauth_fleet_ask(ngx_http_sf_oauth_fleet_op_t *op)
{
    u_char                     ttl[NGX_INT_T_LEN], known[NGX_INT_T_LEN];
    u_char                     over[NGX_INT_T_LEN];
    u_char                     msg[NGX_HTTP_SF_OAUTH_ZONE_NAME_MAX
                                   + NGX_HTTP_SF_OAUTH_NAME_MAX
                                   + NGX_INT_T_LEN + 2];
    size_t                     len;
    ngx_int_t                  rc;
    ngx_str_t                  args[9];
    ngx_uint_t                 base;
    ngx_msec_t                 quarantine;
    ngx_pool_t                *pool;
    const char                *keys[4] = { "gen", "lease", "record",
                                           "keyfp" };
    ngx_http_sf_oauth_zone_t  *zone;
    ngx_http_sf_oauth_cred_t  *cred;

    cred = op->cred;
    zone = cred->shm_zone->data;

    /*
     * After a change of primary, the new one may never have seen a lease
     * that the old one granted: none is taken until that lease would have
     * expired, but the fleet is still read for a newer generation (the
     * outcome of that lease's refresh, written back)
     */

    quarantine = ngx_http_sf_oauth_fleet_quarantine(cred);

    if (quarantine) {
        ngx_http_sf_oauth_fleet_extend(cred, quarantine);

        if (!op->quarantined) {
            op->quarantined = 1;

            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                           "sf_oauth: credential \"%V\": the Redis primary "
                           "changed: no fleet lease for %M ms, waiting for "
                           "a newer generation", &cred->name, quarantine);
        }
    }

    ngx_http_sf_oauth_fleet_new_owner(cred);

    args[0].data = cred->rt.fleet_owner;
    args[0].len = cred->rt.fleet_owner_len;
    args[1].data = ttl;
    args[1].len = ngx_sprintf(ttl, "%M",
                              cred->timeout + NGX_HTTP_SF_OAUTH_LEASE_SLACK)
                  - ttl;
    args[2].data = known;
    args[2].len = ngx_sprintf(known, "%ui", cred->rt.fleet_known) - known;
    args[3].data = (u_char *) (quarantine ? "0" : "1");
    args[3].len = 1;

    /*
     * A token of this node's that Redis never got (its write-back refused
     * by a replica in a failover) goes with the question: while this
     * worker waits, no other of the node writes it (a refresh of the
     * node's runs), and a node that knows only Redis would refresh with
     * the refresh token that this one's rotated out
     */

    pool = NULL;
    ngx_str_null(&args[4]);
    base = 0;

    if (ngx_http_sf_oauth_store_fleet_unwritten(cred)) {
        pool = ngx_create_pool(4096, ngx_cycle->log);

        if (pool != NULL) {
            args[4].data = ngx_http_sf_oauth_fleet_unwritten(cred, pool,
                                                             &base, &len);
            args[4].len = args[4].data ? len : 0;
        }
    }

    args[5].data = over;
    args[5].len = ngx_sprintf(over, "%ui", base) - over;
    args[6].data = zone->key_fp;
    args[6].len = NGX_HTTP_SF_OAUTH_FP_LEN;
    args[7] = zone->redis->channel;
    args[8].data = msg;
    args[8].len = ngx_sprintf(msg, "%V:%V:%ui", &zone->name, &cred->name,
                              base + 1)
                  - msg;

    cred->rt.fleet_state = NGX_HTTP_SF_OAUTH_FLEET_ASKING;

    rc = ngx_http_sf_oauth_fleet_eval(cred,
                                      &ngx_http_sf_oauth_fleet_acquire_lua,
                                      "taking the fleet's refresh lease in "
                                      "Redis",
                                      4, keys, 9, args,
                                      ngx_http_sf_oauth_fleet_asked, op);

    if (pool != NULL) {
        if (args[4].len) {
            ngx_explicit_memzero(args[4].data, args[4].len);
        }

        ngx_destroy_pool(pool);
    }

    if (rc == NGX_OK) {
        return;
    }

    if (ngx_http_sf_oauth_redis_connecting(zone->redis)) {
        /* a worker's first requests: its connection is on its way */

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": the connection to "
                       "Redis is being set up: asking the fleet again in "
                       "%d ms", &cred->name,
                       NGX_HTTP_SF_OAUTH_FLEET_POLL / 2);

        cred->rt.fleet_state = NGX_HTTP_SF_OAUTH_FLEET_WAITING;
        cred->rt.fleet_timer.handler = ngx_http_sf_oauth_fleet_again;
        cred->rt.fleet_op = op;
        ngx_add_timer(&cred->rt.fleet_timer, NGX_HTTP_SF_OAUTH_FLEET_POLL / 2);
        return;
    }

    (void) ngx_http_sf_oauth_store_fleet_down(cred,
                                          NGX_HTTP_SF_OAUTH_FLEET_UNREACHABLE,
                                          0, NULL);

    cred->rt.fleet_state = NGX_HTTP_SF_OAUTH_FLEET_IDLE;

    /* Redis is back at once, or the failover wait ends: asked again */

    if (ngx_http_sf_oauth_fleet_hold(op, NGX_HTTP_SF_OAUTH_FLEET_SYNC)) {
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": Redis is not connected: "
                   "the fleet is down for this refresh", &cred->name);

    op->handler(cred, NGX_HTTP_SF_OAUTH_FLEET_DOWN, NULL, 0);
    ngx_free(op);
}


/*
 * While Redis is unreachable or refuses the lease script, for up to
 * failover_wait since that began (a failover, a restart), the refresh
 * waits for the fleet rather than go on alone (redis_down): it asks
 * again in "poll" ms, or as soon as the command connection is ready
 * again.  Its requests wait with it, within their own deadline.  Returns
 * 0 when it does not wait (failover_wait 0, or over).
 */

static ngx_uint_t
ngx_http_sf_oauth_fleet_hold(ngx_http_sf_oauth_fleet_op_t *op,
    ngx_msec_t poll)
{
    ngx_msec_t                 left;
    ngx_uint_t                 logged;
    ngx_http_sf_oauth_cred_t  *cred;
    ngx_http_sf_oauth_zone_t  *zone;

    cred = op->cred;
    zone = cred->shm_zone->data;

    left = ngx_http_sf_oauth_fleet_failover_left(cred);

    if (left == 0) {
        return 0;
    }

    (void) ngx_http_sf_oauth_store_fleet_down(cred, 0, 0, &logged);

    if (!logged) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": Redis \"%V\" is "
                      "unreachable or refuses the fleet's lease: a refresh "
                      "waits for it to be back, up to failover_wait (%M ms "
                      "left), before redis_down applies; requests that "
                      "need a new token wait meanwhile", &cred->name,
                      &zone->redis->name, left);
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": waiting for Redis, %M ms "
                   "left of failover_wait", &cred->name, left);

    ngx_http_sf_oauth_fleet_extend(cred, left);

    cred->rt.fleet_state = NGX_HTTP_SF_OAUTH_FLEET_WAITING;
    cred->rt.fleet_timer.handler = ngx_http_sf_oauth_fleet_again;
    cred->rt.fleet_op = op;
    ngx_add_timer(&cred->rt.fleet_timer, ngx_min(left, poll));

    return 1;
}


/*
 * Whether an error reply says that the server is no writable primary:
 * READONLY (a replica, inside a script too), MASTERDOWN, LOADING
 */

static ngx_uint_t
ngx_http_sf_oauth_fleet_no_primary(redisReply *r)
{
    u_char  *p, *last;

    if (r->type != REDIS_REPLY_ERROR) {
        return 0;
    }

    p = (u_char *) r->str;
    last = p + r->len;

    return ngx_strlcasestrn(p, last, (u_char *) "READONLY", 8 - 1) != NULL
           || (r->len >= 10 && ngx_strncmp(p, "MASTERDOWN", 10) == 0)
           || (r->len >= 7 && ngx_strncmp(p, "LOADING", 7) == 0);
}


/*
 * The wait for another node's lease ends no sooner than the full wait
 * after "wait" ms: those spent in the quarantine or the failover wait;
 * nor does this worker's lease in the zone
 */

static void
ngx_http_sf_oauth_fleet_extend(ngx_http_sf_oauth_cred_t *cred,
    ngx_msec_t wait)
{
    ngx_msec_t  deadline;

    deadline = ngx_current_msec + wait + cred->timeout
               + 2 * NGX_HTTP_SF_OAUTH_LEASE_SLACK;

    if ((ngx_msec_int_t) (deadline - cred->rt.fleet_deadline) > 0) {
        cred->rt.fleet_deadline = deadline;
    }

    /* and the zone's lease of this worker, which the wait outlasts */
    ngx_http_sf_oauth_store_fleet_extend_lease(cred, deadline);
}


static void
ngx_http_sf_oauth_fleet_asked(void *reply, void *data)
{
    redisReply                    *r = reply;
    ngx_http_sf_oauth_fleet_op_t  *op = data;

    ngx_int_t                  rc;
    ngx_uint_t                 answer, gen;
    ngx_http_sf_oauth_node_t  *rec;
    ngx_http_sf_oauth_cred_t  *cred;

    cred = op->cred;
    cred->rt.fleet_state = NGX_HTTP_SF_OAUTH_FLEET_IDLE;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 4
        || ngx_http_sf_oauth_fleet_number(r->element[0], &answer) != NGX_OK
        || ngx_http_sf_oauth_fleet_number(r->element[1], &gen) != NGX_OK
        || r->element[2]->type != REDIS_REPLY_STRING
        || r->element[3]->type != REDIS_REPLY_STRING)
    {
        if (r && r->type == REDIS_REPLY_ERROR && !op->refused) {
            /* once a refresh: the failover wait asks again */
            op->refused = 1;
            ngx_http_sf_oauth_fleet_error(cred, "Redis refused the lease "
                                          "script", r);
        }

        /*
         * No primary answers (the connection failed, or a replica or a
         * loading server refused): the failover wait; any other refusal
         * (an ACL, OOM) is no failover, and the fleet is down at once
         */

        if (r == NULL || ngx_http_sf_oauth_fleet_no_primary(r)) {
            (void) ngx_http_sf_oauth_store_fleet_down(cred,
                                          r == NULL
                                          ? NGX_HTTP_SF_OAUTH_FLEET_UNREACHABLE
                                          : NGX_HTTP_SF_OAUTH_FLEET_REFUSED,
                                          0, NULL);

            if (ngx_http_sf_oauth_fleet_hold(op,
                                             5 * NGX_HTTP_SF_OAUTH_FLEET_POLL))
            {
                return;
            }
        }

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": no answer to the lease "
                       "script: the fleet is down for this refresh",
                       &cred->name);

        op->handler(cred, NGX_HTTP_SF_OAUTH_FLEET_DOWN, NULL, 0);
        ngx_free(op);
        return;
    }

    /* Redis answers the lease script: no outage, whatever came before */

    (void) ngx_http_sf_oauth_store_fleet_down(cred, 0,
                                          NGX_HTTP_SF_OAUTH_FLEET_UNREACHABLE
                                          | NGX_HTTP_SF_OAUTH_FLEET_REFUSED,
                                          NULL);

    if (answer != NGX_HTTP_SF_OAUTH_FLEET_LEASE) {
        /* the generation that Redis holds: after a failover, the base */
        ngx_http_sf_oauth_store_fleet_seen(cred, gen);
    }

    rec = ngx_alloc(sizeof(ngx_http_sf_oauth_node_t), ngx_cycle->log);
    if (rec == NULL) {
        op->handler(cred, NGX_HTTP_SF_OAUTH_FLEET_DOWN, NULL, 0);
        ngx_free(op);
        return;
    }

    switch (answer) {

    case NGX_HTTP_SF_OAUTH_FLEET_NEWER:

        if (cred->rt.fleet_distrust) {
            /*
             * The token that failed was got while Redis was unreachable:
             * the fleet's generation may be older, and dead with it.  Only
             * a generation written from now on is taken.
             */

            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                           "sf_oauth: credential \"%V\": fleet generation "
                           "%ui not taken: the token that failed was got "
                           "while Redis was unreachable; asking again",
                           &cred->name, gen);

            cred->rt.fleet_distrust = 0;
            cred->rt.fleet_known = gen;
            ngx_explicit_memzero(rec, sizeof(ngx_http_sf_oauth_node_t));
            ngx_free(rec);
            ngx_http_sf_oauth_fleet_ask(op);
            return;
        }

        rc = ngx_http_sf_oauth_fleet_adopt(cred, gen, r->element[2],
                                           r->element[3], rec);

        if (rc == NGX_OK) {
            ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                           "sf_oauth: credential \"%V\": fleet generation "
                           "%ui is newer than %ui: taken, no token request",
                           &cred->name, gen, cred->rt.fleet_known);

            op->handler(cred, NGX_HTTP_SF_OAUTH_FLEET_NEWER, rec, gen);
            break;
        }

        if (rc == NGX_DECLINED) {
            /* another key's: this node's refresh token is older than it */

            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                           "sf_oauth: credential \"%V\": fleet generation "
                           "%ui is another key's: no token request",
                           &cred->name, gen);

            ngx_http_sf_oauth_fleet_mismatch(cred, gen, r->element[3]);
            op->handler(cred, NGX_HTTP_SF_OAUTH_FLEET_KEY, NULL, gen);
            break;
        }

        /* a record that cannot be used: ask again, knowing its generation */

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": the record of fleet "
                       "generation %ui cannot be used: asking again over it",
                       &cred->name, gen);

        cred->rt.fleet_known = gen;
        ngx_explicit_memzero(rec, sizeof(ngx_http_sf_oauth_node_t));
        ngx_free(rec);
        ngx_http_sf_oauth_fleet_ask(op);
        return;

    case NGX_HTTP_SF_OAUTH_FLEET_LEASE:

        cred->rt.fleet_state = NGX_HTTP_SF_OAUTH_FLEET_LEASED;
        cred->rt.fleet_base = gen;

        ngx_log_debug4(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": fleet lease taken over "
                       "generation %ui as \"%*s\"", &cred->name, gen,
                       cred->rt.fleet_owner_len, cred->rt.fleet_owner);

        if (ngx_http_sf_oauth_fleet_overtaken(op)) {
            ngx_free(rec);
            return;
        }

        /*
         * The record is read for its refresh token only, and not when this
         * node has a token of its own that it could not write back: its
         * refresh token is newer than the record's.
         */

        rc = NGX_ABORT;

        if (r->element[2]->len && !cred->rt.fleet_distrust) {
            rc = ngx_http_sf_oauth_fleet_decode(cred, gen, r->element[2],
                                                r->element[3], rec);
        }

        if (rc != NGX_OK
            && ngx_http_sf_oauth_fleet_refused(cred, gen, rc, r->element[3]))
        {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                           "sf_oauth: credential \"%V\": this node's "
                           "refresh token may be older than fleet "
                           "generation %ui's, another key's: the lease goes "
                           "back, no token request", &cred->name, gen);

            ngx_http_sf_oauth_fleet_release(cred);
            op->handler(cred, NGX_HTTP_SF_OAUTH_FLEET_KEY, NULL, gen);
            break;
        }

        ngx_http_sf_oauth_store_fleet_owner(cred, cred->rt.fleet_owner,
                                            cred->rt.fleet_owner_len);

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": refreshing with %s "
                       "refresh token", &cred->name,
                       rc == NGX_OK ? "the fleet's" : "this node's");

        /* renewed every third of its time while the token request runs */
        cred->rt.fleet_timer.handler = ngx_http_sf_oauth_fleet_renewal;
        ngx_add_timer(&cred->rt.fleet_timer,
                      (cred->timeout + NGX_HTTP_SF_OAUTH_LEASE_SLACK) / 3);

        op->handler(cred, NGX_HTTP_SF_OAUTH_FLEET_LEASE,
                    rc == NGX_OK ? rec : NULL, gen);

        break;

    default: /* NGX_HTTP_SF_OAUTH_FLEET_HELD */

        ngx_http_sf_oauth_store_fleet_owner(cred, (u_char *) r->element[2]->str,
                                            r->element[2]->len);

        if ((ngx_msec_int_t) (cred->rt.fleet_deadline - ngx_current_msec)
            <= 0)
        {
            ngx_log_debug4(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                           "sf_oauth: credential \"%V\": fleet lease still "
                           "held by \"%*s\" at generation %ui, past the "
                           "wait's deadline", &cred->name,
                           ngx_min(r->element[2]->len, 64),
                           r->element[2]->str, gen);

            op->handler(cred, NGX_HTTP_SF_OAUTH_FLEET_HELD, NULL, gen);
            break;
        }

        /* another node refreshes: ask again soon, for its outcome */

        ngx_log_debug5(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": fleet lease held by "
                       "\"%*s\" at generation %ui: asking again in %d ms",
                       &cred->name, ngx_min(r->element[2]->len, 64),
                       r->element[2]->str, gen, NGX_HTTP_SF_OAUTH_FLEET_POLL);

        ngx_free(rec);

        cred->rt.fleet_state = NGX_HTTP_SF_OAUTH_FLEET_WAITING;
        cred->rt.fleet_timer.handler = ngx_http_sf_oauth_fleet_again;
        cred->rt.fleet_op = op;
        ngx_add_timer(&cred->rt.fleet_timer, NGX_HTTP_SF_OAUTH_FLEET_POLL);
        return;
    }

    ngx_explicit_memzero(rec, sizeof(ngx_http_sf_oauth_node_t));
    ngx_free(rec);
    ngx_free(op);
}


/* the next question while another node refreshes */

static void
ngx_http_sf_oauth_fleet_again(ngx_event_t *ev)
{
    ngx_http_sf_oauth_cred_t  *cred;

    cred = (ngx_http_sf_oauth_cred_t *)
               ((u_char *) ev - offsetof(ngx_http_sf_oauth_cred_t,
                                         rt.fleet_timer));

    if (ngx_http_sf_oauth_fleet_overtaken(cred->rt.fleet_op)) {
        return;
    }

    ngx_http_sf_oauth_fleet_ask(cred->rt.fleet_op);
}


/*
 * While this worker waited for another node's refresh, its own node took
 * a newer token from the fleet (the periodic read or an announcement, in
 * another worker): that is the answer, NEWER.  Asking on would take a
 * lease with the refresh token of the generation that failed, which the
 * newer one's refresh rotated out (after Redis lost its data, the fleet
 * has no newer generation to say so).
 */

static ngx_uint_t
ngx_http_sf_oauth_fleet_overtaken(ngx_http_sf_oauth_fleet_op_t *op)
{
    ngx_uint_t                 fleet, local, dirty;
    ngx_http_sf_oauth_cred_t  *cred;

    cred = op->cred;

    fleet = ngx_http_sf_oauth_store_fleet_view(cred, &local, &dirty);

    if (fleet <= op->base) {
        return 0;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: fleet generation %ui taken while waiting "
                   "for generation %ui's refresh", fleet, op->base);

    /* a lease just taken (the answer LEASE) is not needed: it goes back */
    ngx_http_sf_oauth_fleet_release(cred);

    cred->rt.fleet_state = NGX_HTTP_SF_OAUTH_FLEET_IDLE;
    op->handler(cred, NGX_HTTP_SF_OAUTH_FLEET_NEWER, NULL, fleet);
    ngx_free(op);

    return 1;
}


/* the lease's renewal, every third of its time */

static void
ngx_http_sf_oauth_fleet_renewal(ngx_event_t *ev)
{
    ngx_http_sf_oauth_cred_t  *cred;

    cred = (ngx_http_sf_oauth_cred_t *)
               ((u_char *) ev - offsetof(ngx_http_sf_oauth_cred_t,
                                         rt.fleet_timer));

    ngx_http_sf_oauth_fleet_renew(cred);
}


static void
ngx_http_sf_oauth_fleet_renew(ngx_http_sf_oauth_cred_t *cred)
{
    u_char       ttl[NGX_INT_T_LEN];
    ngx_str_t    args[2];
    const char  *keys[1] = { "lease" };

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": renewing the fleet lease "
                   "\"%*s\"", &cred->name, cred->rt.fleet_owner_len,
                   cred->rt.fleet_owner);

    args[0].data = cred->rt.fleet_owner;
    args[0].len = cred->rt.fleet_owner_len;
    args[1].data = ttl;
    args[1].len = ngx_sprintf(ttl, "%M",
                              cred->timeout + NGX_HTTP_SF_OAUTH_LEASE_SLACK)
                  - ttl;

    (void) ngx_http_sf_oauth_fleet_eval(cred,
                                        &ngx_http_sf_oauth_fleet_renew_lua,
                                        "renewing the fleet's refresh lease "
                                        "in Redis",
                                        1, keys, 2, args,
                                        ngx_http_sf_oauth_fleet_renewed,
                                        cred);

    ngx_add_timer(&cred->rt.fleet_timer,
                  (cred->timeout + NGX_HTTP_SF_OAUTH_LEASE_SLACK) / 3);
}


static void
ngx_http_sf_oauth_fleet_renewed(void *reply, void *data)
{
    redisReply                *r = reply;
    ngx_http_sf_oauth_cred_t  *cred = data;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": fleet lease renewal: %s",
                   &cred->name,
                   r == NULL ? "no answer"
                   : r->type != REDIS_REPLY_INTEGER ? "refused"
                   : r->integer == 0 ? "lost" : "renewed");

    if (r && r->type == REDIS_REPLY_INTEGER && r->integer == 0
        && cred->rt.fleet_state == NGX_HTTP_SF_OAUTH_FLEET_LEASED)
    {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": the fleet's refresh "
                      "lease expired while the token request runs; its "
                      "outcome is stored only if no node stored a newer "
                      "one", &cred->name);
    }
}


/*
 * Writes the zone's token back to Redis, over the generation this worker
 * took the lease at (or knew, for a token got while Redis was down), and
 * drops the lease.  The answer: STORED, STALE (a newer generation was
 * there: it is adopted instead), DOWN.
 */

void
ngx_http_sf_oauth_fleet_store(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_fleet_pt handler)
{
    ngx_http_sf_oauth_fleet_store_op(cred, handler, 0);
}


/*
 * As ngx_http_sf_oauth_fleet_store, for the tokens that the operator has
 * just connected (a new refresh token chain): they become the fleet's
 * newest generation whatever another node stored meanwhile.  A newer
 * generation in Redis is not adopted: the connection's record is written
 * again over it, with the same compare-and-set, until it is the newest
 * (or NGX_HTTP_SF_OAUTH_FLEET_REBASES times, then as a STALE store).  The
 * answer: STORED, STALE, DOWN.
 */

void
ngx_http_sf_oauth_fleet_store_connected(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_fleet_pt handler)
{
    ngx_http_sf_oauth_fleet_store_op(cred, handler, 1);
}


static void
ngx_http_sf_oauth_fleet_store_op(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_fleet_pt handler, ngx_uint_t connected)
{
    ngx_uint_t                     local, dirty;
    ngx_http_sf_oauth_node_t      *copy;
    ngx_http_sf_oauth_fleet_op_t  *op;

    if (cred->rt.fleet_timer.timer_set) {
        ngx_del_timer(&cred->rt.fleet_timer);
    }

    if (cred->rt.fleet_state != NGX_HTTP_SF_OAUTH_FLEET_LEASED) {
        /* a token got while Redis was down: over the generation known */
        cred->rt.fleet_base = ngx_http_sf_oauth_store_fleet_view(cred, &local,
                                                                 &dirty);
    }

    cred->rt.fleet_state = NGX_HTTP_SF_OAUTH_FLEET_IDLE;

    copy = ngx_alloc(sizeof(ngx_http_sf_oauth_node_t), ngx_cycle->log);
    op = ngx_alloc(sizeof(ngx_http_sf_oauth_fleet_op_t), ngx_cycle->log);

    if (copy == NULL || op == NULL) {
        goto failed;
    }

    ngx_http_sf_oauth_store_snapshot(cred, copy);

    /*
     * Its access token may be dead already (a token that could not be
     * written back, rejected since): its refresh token is what matters
     */

    if (ngx_http_sf_oauth_fleet_record(copy) != NGX_OK) {
        goto failed;
    }

    op->cred = cred;
    op->handler = handler;
    (void) ngx_http_sf_oauth_store_fleet_view(cred, &op->base, &dirty);
    op->connected = NULL;
    op->over = cred->rt.fleet_base;
    op->first = cred->rt.fleet_base;
    op->rebases = 0;

    if (ngx_http_sf_oauth_fleet_write(op, copy, op->over) != NGX_OK) {
        goto failed;
    }

    if (connected) {
        /* kept, to be written again over a newer generation */
        op->connected = copy;

    } else {
        ngx_explicit_memzero(copy, sizeof(ngx_http_sf_oauth_node_t));
        ngx_free(copy);
    }

    return;

failed:

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": the token is not written "
                   "to the fleet now: Redis is not connected, or no token",
                   &cred->name);

    if (copy) {
        ngx_explicit_memzero(copy, sizeof(ngx_http_sf_oauth_node_t));
        ngx_free(copy);
    }

    if (op) {
        ngx_free(op);
    }

    handler(cred, NGX_HTTP_SF_OAUTH_FLEET_DOWN, NULL, 0);
}


/*
 * The store script for rec, bound to and announced as generation base + 1,
 * over "base"; its answer goes to ngx_http_sf_oauth_fleet_stored.
 */

static ngx_int_t
ngx_http_sf_oauth_fleet_write(ngx_http_sf_oauth_fleet_op_t *op,
    ngx_http_sf_oauth_node_t *rec, ngx_uint_t base)
{
    u_char                        *blob, gen[NGX_INT_T_LEN];
    u_char                         ctx[NGX_HTTP_SF_OAUTH_ZONE_NAME_MAX
                                       + NGX_HTTP_SF_OAUTH_NAME_MAX
                                       + NGX_INT_T_LEN + 2];
    u_char                         msg[NGX_HTTP_SF_OAUTH_ZONE_NAME_MAX
                                       + NGX_HTTP_SF_OAUTH_NAME_MAX
                                       + NGX_INT_T_LEN + 2];
    size_t                         len;
    ngx_int_t                      rc;
    ngx_str_t                      args[6], context;
    ngx_pool_t                    *pool;
    const char                    *keys[4] = { "gen", "record", "lease",
                                               "keyfp" };
    ngx_http_sf_oauth_cred_t      *cred;
    ngx_http_sf_oauth_zone_t      *zone;

    cred = op->cred;
    zone = cred->shm_zone->data;

    pool = ngx_create_pool(4096, ngx_cycle->log);
    if (pool == NULL) {
        return NGX_ERROR;
    }

    ngx_http_sf_oauth_fleet_context(cred, base + 1, ctx, &context);

    blob = ngx_http_sf_oauth_codec_encode(zone->key, &context, rec, 1, pool,
                                          &len);

    if (blob == NULL) {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": writing the token to the "
                   "fleet over generation %ui", &cred->name, base);

    args[0].data = gen;
    args[0].len = ngx_sprintf(gen, "%ui", base) - gen;
    args[1].data = blob;
    args[1].len = len;
    args[2].data = cred->rt.fleet_owner;
    args[2].len = cred->rt.fleet_owner_len;
    args[3] = zone->redis->channel;
    args[4].data = msg;
    args[4].len = ngx_sprintf(msg, "%V:%V:%ui", &zone->name, &cred->name,
                              base + 1)
                  - msg;
    args[5].data = zone->key_fp;
    args[5].len = NGX_HTTP_SF_OAUTH_FP_LEN;

    rc = ngx_http_sf_oauth_fleet_eval(cred, &ngx_http_sf_oauth_fleet_store_lua,
                                      "writing the fleet's record to Redis",
                                      4, keys, 6, args,
                                      ngx_http_sf_oauth_fleet_stored, op);

    ngx_explicit_memzero(blob, len);
    ngx_destroy_pool(pool);

    return rc;
}


static void
ngx_http_sf_oauth_fleet_stored(void *reply, void *data)
{
    redisReply                    *r = reply;
    ngx_http_sf_oauth_fleet_op_t  *op = data;

    ngx_uint_t                 answer, gen, mine;
    ngx_http_sf_oauth_cred_t  *cred;

    cred = op->cred;

    if (r && r->type == REDIS_REPLY_ERROR) {
        ngx_http_sf_oauth_fleet_error(cred, "Redis refused the store script",
                                      r);
    }

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 2
        || ngx_http_sf_oauth_fleet_number(r->element[0], &answer) != NGX_OK
        || ngx_http_sf_oauth_fleet_number(r->element[1], &gen) != NGX_OK)
    {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": no answer to the store "
                       "script: written back when Redis is there again",
                       &cred->name);

        op->handler(cred, NGX_HTTP_SF_OAUTH_FLEET_DOWN, NULL, 0);
        ngx_http_sf_oauth_fleet_op_free(op);
        return;
    }

    if (answer == NGX_HTTP_SF_OAUTH_FLEET_STALE && op->connected
        && ngx_http_sf_oauth_fleet_rebase(op, gen))
    {
        /* written again over "gen"; this answer comes again */
        return;
    }

    if (answer == NGX_HTTP_SF_OAUTH_FLEET_STORED) {
        mine = (r->elements == 3
                && ngx_http_sf_oauth_fleet_number(r->element[2], &mine)
                   == NGX_OK)
               ? mine : 0;

        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": the token is fleet "
                       "generation %ui in Redis%s", &cred->name, gen,
                       mine ? ", the lease given back" : ", without the lease");

        /* the zone's token is generation "gen", if it is still there */
        ngx_http_sf_oauth_store_fleet_stored(cred, op->base, gen);
        ngx_http_sf_oauth_store_fleet_owner(cred, NULL, 0);

        if (!mine && op->connected == NULL) {
            /* a connection holds no fleet lease: nothing to give back */

            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "sf_oauth: credential \"%V\": the token was "
                          "written to the fleet as generation %ui without "
                          "the lease (it had expired, or Redis was "
                          "unreachable): no node had stored a newer one",
                          &cred->name, gen);
        }

        if (op->rebases) {
            ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                          "sf_oauth: credential \"%V\": the connection "
                          "overwrote fleet generation %ui, which another "
                          "node stored meanwhile (it was connected over "
                          "generation %ui): it is fleet generation %ui",
                          &cred->name, op->over, op->first, gen);
        }

        op->handler(cred, NGX_HTTP_SF_OAUTH_FLEET_STORED, NULL, gen);
        ngx_http_sf_oauth_fleet_op_free(op);
        return;
    }

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "sf_oauth: credential \"%V\": another node stored a newer "
                  "token (fleet generation %ui): this node's is dropped and "
                  "the fleet's is used", &cred->name, gen);

    /* the token stays unsynced until the fleet's newer one is taken */
    ngx_http_sf_oauth_fleet_release(cred);
    ngx_http_sf_oauth_fleet_read(cred, 0, ngx_http_sf_oauth_fleet_synced);

    op->handler(cred, NGX_HTTP_SF_OAUTH_FLEET_STALE, NULL, gen);
    ngx_http_sf_oauth_fleet_op_free(op);
}


/*
 * A connection's store found generation "gen", newer than the one it was
 * written over: another node refreshed the old refresh token chain
 * meanwhile.  That record is not adopted; the connection's is written
 * again over "gen".  Returns 0 when it is not (it was tried enough, a
 * token request of this node began since the connection, which may have
 * rotated its refresh token out, or it cannot be sent): the answer is
 * then handled as an ordinary store's.
 */

static ngx_uint_t
ngx_http_sf_oauth_fleet_rebase(ngx_http_sf_oauth_fleet_op_t *op,
    ngx_uint_t gen)
{
    ngx_http_sf_oauth_cred_t  *cred;

    cred = op->cred;

    if (op->rebases == NGX_HTTP_SF_OAUTH_FLEET_REBASES) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": the connection was "
                      "written over a newer fleet generation %ui times, "
                      "and other nodes stored newer ones each time: the "
                      "fleet's generation %ui is used; connect again",
                      &cred->name, op->rebases, gen);
        return 0;
    }

    if (ngx_http_sf_oauth_store_fleet_requested(cred,
                                                op->connected->token_requests))
    {
        /* its refresh token may be rotated out: never written again */

        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": another node stored "
                      "fleet generation %ui while the connection was "
                      "written over %ui, and this node made a token "
                      "request since: the fleet's token is used",
                      &cred->name, gen, op->over);
        return 0;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": another node stored fleet "
                   "generation %ui over %ui: the connection is written over "
                   "it", &cred->name, gen, op->over);

    if (ngx_http_sf_oauth_fleet_write(op, op->connected, gen) != NGX_OK) {
        return 0;
    }

    op->over = gen;
    op->rebases++;

    return 1;
}


static void
ngx_http_sf_oauth_fleet_op_free(ngx_http_sf_oauth_fleet_op_t *op)
{
    if (op->connected) {
        ngx_explicit_memzero(op->connected, sizeof(ngx_http_sf_oauth_node_t));
        ngx_free(op->connected);
    }

    ngx_free(op);
}


/*
 * Redis holds an older generation than the zone's: it lost its data.  The
 * zone's token goes back as the generation it had, which the other nodes
 * have too, or a newer one; a rejected one too, for its refresh token.
 */

static void
ngx_http_sf_oauth_fleet_restore(ngx_http_sf_oauth_cred_t *cred)
{
    u_char                     *blob, gen[NGX_INT_T_LEN];
    u_char                      ctx[NGX_HTTP_SF_OAUTH_ZONE_NAME_MAX
                                    + NGX_HTTP_SF_OAUTH_NAME_MAX
                                    + NGX_INT_T_LEN + 2];
    u_char                      msg[NGX_HTTP_SF_OAUTH_ZONE_NAME_MAX
                                    + NGX_HTTP_SF_OAUTH_NAME_MAX
                                    + NGX_INT_T_LEN + 2];
    size_t                      len;
    ngx_str_t                   args[5], context;
    ngx_uint_t                  fleet;
    ngx_pool_t                 *pool;
    const char                 *keys[3] = { "gen", "record", "keyfp" };
    ngx_http_sf_oauth_zone_t   *zone;
    ngx_http_sf_oauth_node_t   *copy;

    zone = cred->shm_zone->data;

    pool = ngx_create_pool(4096, ngx_cycle->log);
    copy = ngx_alloc(sizeof(ngx_http_sf_oauth_node_t), ngx_cycle->log);

    if (pool == NULL || copy == NULL) {
        goto done;
    }

    ngx_http_sf_oauth_store_snapshot(cred, copy);

    fleet = copy->fleet_generation;

    if (fleet == 0) {
        goto done;
    }

    /*
     * A token that Salesforce rejected since (a revoke) goes back too,
     * for its refresh token, still the newest there is: a node that knows
     * only Redis would refresh with the one it rotated out.  The record
     * has no access token then (ngx_http_sf_oauth_fleet_record).  So does
     * one whose refresh failed since: Redis's older one is no better.
     */

    if (ngx_http_sf_oauth_fleet_record(copy) != NGX_OK) {
        goto done;
    }

    ngx_http_sf_oauth_fleet_context(cred, fleet, ctx, &context);

    blob = ngx_http_sf_oauth_codec_encode(zone->key, &context, copy, 1, pool,
                                          &len);
    if (blob == NULL) {
        goto done;
    }

    args[0].data = gen;
    args[0].len = ngx_sprintf(gen, "%ui", fleet) - gen;
    args[1].data = blob;
    args[1].len = len;
    args[2] = zone->redis->channel;
    args[3].data = msg;
    args[3].len = ngx_sprintf(msg, "%V:%V:%ui", &zone->name, &cred->name,
                              fleet)
                  - msg;
    args[4].data = zone->key_fp;
    args[4].len = NGX_HTTP_SF_OAUTH_FP_LEN;

    (void) ngx_http_sf_oauth_fleet_eval(cred,
                                        &ngx_http_sf_oauth_fleet_restore_lua,
                                        "putting the fleet's record back "
                                        "in Redis",
                                        3, keys, 5, args,
                                        ngx_http_sf_oauth_fleet_noop, NULL);

    ngx_explicit_memzero(blob, len);

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "sf_oauth: credential \"%V\": Redis holds an older "
                  "generation than this node (it lost its data?  or the "
                  "nodes' sf_oauth_redis blocks differ in server, "
                  "database or prefix): fleet generation %ui is put "
                  "back", &cred->name, fleet);

done:

    if (copy) {
        ngx_explicit_memzero(copy, sizeof(ngx_http_sf_oauth_node_t));
        ngx_free(copy);
    }

    if (pool) {
        ngx_destroy_pool(pool);
    }
}


/* gives the fleet's lease back, if this worker holds it */

void
ngx_http_sf_oauth_fleet_release(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_str_t    args[1];
    const char  *keys[1] = { "lease" };

    if (cred->rt.fleet_timer.timer_set) {
        ngx_del_timer(&cred->rt.fleet_timer);
    }

    if (cred->rt.fleet_state != NGX_HTTP_SF_OAUTH_FLEET_LEASED) {
        return;
    }

    cred->rt.fleet_state = NGX_HTTP_SF_OAUTH_FLEET_IDLE;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": giving the fleet lease "
                   "\"%*s\" back", &cred->name, cred->rt.fleet_owner_len,
                   cred->rt.fleet_owner);

    args[0].data = cred->rt.fleet_owner;
    args[0].len = cred->rt.fleet_owner_len;

    (void) ngx_http_sf_oauth_fleet_eval(cred,
                                        &ngx_http_sf_oauth_fleet_release_lua,
                                        "releasing the fleet's refresh lease "
                                        "in Redis",
                                        1, keys, 1, args,
                                        ngx_http_sf_oauth_fleet_noop, NULL);

    ngx_http_sf_oauth_store_fleet_owner(cred, NULL, 0);
}


/* the periodic read: every credential of every fleet zone, every second */

static void
ngx_http_sf_oauth_fleet_sync_all(ngx_event_t *ev)
{
    ngx_uint_t                      i;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    smcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_sf_oauth_module);
    cred = smcf->creds.elts;

    for (i = 0; i < smcf->creds.nelts; i++) {
        if (cred[i]->rt.node && ngx_http_sf_oauth_fleet_on(cred[i])) {
            ngx_http_sf_oauth_fleet_sync(cred[i]);
        }
    }

    ngx_add_timer(ev, NGX_HTTP_SF_OAUTH_FLEET_SYNC);
}


/*
 * The periodic read, a message of the channel and a reconnection ask for
 * it.  One is in flight per credential and worker at a time: those asked
 * for meanwhile (a flood of messages) make one more after it, so that
 * anyone who can publish on the channel cannot make the worker queue a
 * command a message.
 */

static void
ngx_http_sf_oauth_fleet_sync(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_uint_t                 fleet, local, dirty;
    ngx_http_sf_oauth_zone_t  *zone;

    if (!ngx_http_sf_oauth_fleet_connected(cred)) {
        zone = cred->shm_zone->data;

        /* the outage's beginning, for failover_wait, within a second */

        if (!ngx_http_sf_oauth_redis_connecting(zone->redis)) {
            (void) ngx_http_sf_oauth_store_fleet_down(cred,
                                          NGX_HTTP_SF_OAUTH_FLEET_UNREACHABLE,
                                          0, NULL);
        }

        return;
    }

    if (cred->rt.fleet_syncing) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": a read of the fleet "
                       "is in flight: one more after it", &cred->name);

        cred->rt.fleet_sync_again = 1;
        return;
    }

    cred->rt.fleet_syncing = 1;
    cred->rt.fleet_sync_again = 0;

    fleet = ngx_http_sf_oauth_store_fleet_view(cred, &local, &dirty);

    if (dirty
        && cred->rt.fleet_state == NGX_HTTP_SF_OAUTH_FLEET_IDLE
        && cred->rt.transfer == NULL)
    {
        /* a token got while Redis was unreachable: the newest one wins */

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": writing back the token "
                       "got while Redis was unreachable", &cred->name);

        ngx_http_sf_oauth_fleet_store(cred, ngx_http_sf_oauth_fleet_written);
        return;
    }

    ngx_http_sf_oauth_fleet_read(cred, fleet,
                                 ngx_http_sf_oauth_fleet_synced_again);
}


/* the read of fleet_sync answered, or failed with its connection */

static void
ngx_http_sf_oauth_fleet_synced_again(void *reply, void *data)
{
    ngx_http_sf_oauth_cred_t  *cred = data;

    cred->rt.fleet_syncing = 0;

    ngx_http_sf_oauth_fleet_synced(reply, data);

    if (cred->rt.fleet_sync_again) {
        cred->rt.fleet_sync_again = 0;

        /* a connection that failed is read again once it is back */

        if (reply != NULL) {
            ngx_http_sf_oauth_fleet_sync(cred);
        }
    }
}


/* the SYNC script: a newer generation than "fleet" is taken */

static void
ngx_http_sf_oauth_fleet_read(ngx_http_sf_oauth_cred_t *cred, ngx_uint_t fleet,
    ngx_http_sf_oauth_reply_pt handler)
{
    u_char       known[NGX_INT_T_LEN];
    ngx_str_t    args[1];
    const char  *keys[4] = { "gen", "record", "lease", "keyfp" };

    args[0].data = known;
    /* a generation whose record could not be used is not read again */
    args[0].len = ngx_sprintf(known, "%ui", ngx_max(fleet, cred->rt.fleet_skip))
                  - known;

    if (ngx_http_sf_oauth_fleet_eval(cred, &ngx_http_sf_oauth_fleet_sync_lua,
                                     "reading the fleet's record from Redis",
                                     4, keys, 1, args, handler, cred)
        != NGX_OK
        && handler == ngx_http_sf_oauth_fleet_synced_again)
    {
        /* not sent: the next periodic read or reconnection tries again */
        cred->rt.fleet_syncing = 0;
        cred->rt.fleet_sync_again = 0;
    }
}


static void
ngx_http_sf_oauth_fleet_synced(void *reply, void *data)
{
    redisReply                *r = reply;
    ngx_http_sf_oauth_cred_t  *cred = data;

    ngx_int_t                  rc;
    ngx_uint_t                 answer, gen, fleet, local, dirty;
    ngx_http_sf_oauth_node_t  *rec;

    if (r && r->type == REDIS_REPLY_ERROR) {
        /* said once, until a read works: it is tried every second */

        if (!cred->rt.fleet_read_refused) {
            cred->rt.fleet_read_refused = 1;
            ngx_http_sf_oauth_fleet_error(cred, "the fleet's periodic read: "
                                          "Redis refused it", r);
        }

        return;
    }

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 5
        || ngx_http_sf_oauth_fleet_number(r->element[0], &answer) != NGX_OK
        || ngx_http_sf_oauth_fleet_number(r->element[1], &gen) != NGX_OK
        || r->element[2]->type != REDIS_REPLY_STRING
        || r->element[3]->type != REDIS_REPLY_STRING
        || r->element[4]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    cred->rt.fleet_read_refused = 0;

    if (answer != NGX_HTTP_SF_OAUTH_FLEET_BAD_GEN) {
        /* the generation that Redis holds: after a failover, the base */
        ngx_http_sf_oauth_store_fleet_seen(cred, gen);
    }

    ngx_http_sf_oauth_store_fleet_owner(cred, (u_char *) r->element[3]->str,
                                        r->element[3]->len);

    if (answer == NGX_HTTP_SF_OAUTH_FLEET_BAD_GEN) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": the fleet generation in "
                      "Redis is not a number: it is ignored, and this "
                      "node's token is put back", &cred->name);
    }

    if (answer != NGX_HTTP_SF_OAUTH_FLEET_NEWER) {

        fleet = ngx_http_sf_oauth_store_fleet_view(cred, &local, &dirty);

        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": fleet generation %ui "
                       "in Redis, %ui here: nothing newer", &cred->name, gen,
                       fleet);

        if (gen < fleet) {
            /* Redis lost its data: the newest generation is put back */
            ngx_http_sf_oauth_fleet_restore(cred);
        }

        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": fleet generation %ui in "
                   "Redis is newer: taking it", &cred->name, gen);

    rec = ngx_alloc(sizeof(ngx_http_sf_oauth_node_t), ngx_cycle->log);
    if (rec == NULL) {
        return;
    }

    rc = ngx_http_sf_oauth_fleet_adopt(cred, gen, r->element[2],
                                       r->element[4], rec);

    if (rc == NGX_DECLINED) {
        /* the token here stays; a new one is not asked for */
        ngx_http_sf_oauth_fleet_mismatch(cred, gen, r->element[4]);
    }

    if (rc != NGX_OK) {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": fleet generation %ui "
                       "not taken: it is not read again", &cred->name, gen);

        cred->rt.fleet_skip = gen;
    }

    ngx_explicit_memzero(rec, sizeof(ngx_http_sf_oauth_node_t));
    ngx_free(rec);
}


/* a message of the channel: "ZONE:CRED:GEN"; that credential is read */

static void
ngx_http_sf_oauth_fleet_message(void *reply, void *data)
{
    redisReply                *r = reply;
    ngx_http_sf_oauth_redis_t *rd = data;

    u_char                         *p, *last;
    ngx_str_t                       zname, cname;
    ngx_uint_t                      i;
    redisReply                     *m;
    ngx_http_sf_oauth_zone_t       *zone;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3
        || r->element[2]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    m = r->element[2];
    p = (u_char *) m->str;
    last = p + m->len;

    zname.data = p;
    p = ngx_strlchr(p, last, ':');
    if (p == NULL) {
        return;
    }

    zname.len = p - zname.data;
    cname.data = ++p;
    p = ngx_strlchr(p, last, ':');
    if (p == NULL) {
        return;
    }

    cname.len = p - cname.data;

    smcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_sf_oauth_module);
    cred = smcf->creds.elts;

    for (i = 0; i < smcf->creds.nelts; i++) {
        zone = cred[i]->shm_zone->data;

        if (zone->redis == rd
            && zone->name.len == zname.len
            && ngx_strncmp(zone->name.data, zname.data, zname.len) == 0
            && cred[i]->name.len == cname.len
            && ngx_strncmp(cred[i]->name.data, cname.data, cname.len) == 0
            && cred[i]->rt.node)
        {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                           "sf_oauth: credential \"%V\": a message of the "
                           "fleet's channel: reading the fleet",
                           &cred[i]->name);

            ngx_http_sf_oauth_fleet_sync(cred[i]);
        }
    }
}


/* a connection is ready again: what was missed is read at once */

static void
ngx_http_sf_oauth_fleet_ready(ngx_http_sf_oauth_redis_t *rd,
    ngx_uint_t subscriber, void *data)
{
    ngx_uint_t                      i;
    ngx_http_sf_oauth_zone_t       *zone;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: redis \"%V\": the %s connection is ready: "
                   "the fleet is read at once", &rd->name,
                   subscriber ? "subscriber" : "command");

    /* the next outage is logged again */

    smcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_sf_oauth_module);
    cred = smcf->creds.elts;

    for (i = 0; i < smcf->creds.nelts; i++) {
        zone = cred[i]->shm_zone->data;

        if (zone->redis == rd && cred[i]->rt.node && !subscriber) {
            ngx_http_sf_oauth_fleet_primary(rd, cred[i]);

            (void) ngx_http_sf_oauth_store_fleet_down(cred[i], 0,
                                          NGX_HTTP_SF_OAUTH_FLEET_UNREACHABLE,
                                          NULL);

            if (cred[i]->rt.fleet_state == NGX_HTTP_SF_OAUTH_FLEET_WAITING
                && cred[i]->rt.fleet_timer.timer_set)
            {
                /* a refresh that waits for the fleet asks again now */
                ngx_del_timer(&cred[i]->rt.fleet_timer);
                ngx_add_timer(&cred[i]->rt.fleet_timer, 1);
            }
        }

        if (zone->redis == rd && cred[i]->rt.node) {
            (void) ngx_http_sf_oauth_store_fleet_outage(cred[i], 0);

            if (rd->down == NGX_HTTP_SF_OAUTH_DOWN_FAIL) {
                /* requests failed for Redis alone: a refresh may go now */

                ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                               "sf_oauth: credential \"%V\": Redis is back: "
                               "the redis_down fail refusal ends",
                               &cred[i]->name);

                ngx_http_sf_oauth_store_fleet_retry(cred[i],
                                             &ngx_http_sf_oauth_fleet_down);
            }
        }
    }

    if (!ngx_http_sf_oauth_fleet_sync_event.timer_set) {
        return;
    }

    ngx_del_timer(&ngx_http_sf_oauth_fleet_sync_event);
    ngx_add_timer(&ngx_http_sf_oauth_fleet_sync_event, 1);
}


/*
 * The command connection is set up with a server: a run_id other than
 * the last one the zone saw is a new primary (a failover, an endpoint
 * that moved, a restart that lost its data), which may never have seen a
 * lease or a write of the old one; the same server with the fleet's keys
 * elsewhere (a reload changed the prefix or the database) is a new place,
 * whose keys never saw the lease of a refresh that runs under the old
 * ones (an old worker's, or a node not reloaded yet).  Said once per
 * node and change.
 */

static void
ngx_http_sf_oauth_fleet_primary(ngx_http_sf_oauth_redis_t *rd,
    ngx_http_sf_oauth_cred_t *cred)
{
    u_char                     buf[NGX_HTTP_SF_OAUTH_RUN_ID_LEN];
    ngx_str_t                  run_id, old;
    ngx_uint_t                 changed;
    ngx_http_sf_oauth_zone_t  *zone;

    ngx_http_sf_oauth_redis_run_id(rd, &run_id);

    old.data = buf;
    old.len = 0;

    changed = ngx_http_sf_oauth_store_fleet_primary(cred, &run_id, &old);

    if (!changed) {
        return;
    }

    zone = cred->shm_zone->data;

    if (changed == NGX_HTTP_SF_OAUTH_FLEET_NEW_PLACE) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sf_oauth: redis \"%V\" at \"%V\": the fleet's keys "
                      "moved (a reload changed the prefix or the database): "
                      "a refresh of the old workers or of a node not "
                      "reloaded yet holds its lease under the old ones, so "
                      "zone \"%V\" takes no fleet lease for a lease's time "
                      "to live (a credential's timeout and %d ms), unless a "
                      "newer token is written back meanwhile; its refreshes "
                      "wait for that; reload every node of the fleet with "
                      "the same block", &rd->name, &rd->server, &zone->name,
                      NGX_HTTP_SF_OAUTH_LEASE_SLACK);
        return;
    }

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "sf_oauth: redis \"%V\" at \"%V\": the primary changed "
                  "(run_id %*s..., was %*s...: a failover, or a restart): it "
                  "may never have seen a fleet lease or a write of the old "
                  "one, so zone \"%V\" takes no fleet lease for a lease's "
                  "time to live (a credential's timeout and %d ms), unless "
                  "a newer token is written back meanwhile; its refreshes "
                  "wait for that", &rd->name, &rd->server,
                  (size_t) 8, run_id.data, (size_t) 8, old.data,
                  &zone->name, NGX_HTTP_SF_OAUTH_LEASE_SLACK);
}


/*
 * A record from Redis, decrypted under its zone, credential and
 * generation, and checked.  Anything wrong with it is an error line, and
 * it is not used (NGX_ERROR); but a record that does not decrypt beside
 * the fingerprint "fp" of another key than the zone's is NGX_DECLINED,
 * for the caller to say.  A record that decrypts ends a key mismatch.
 */

static ngx_int_t
ngx_http_sf_oauth_fleet_decode(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, redisReply *blob, redisReply *fp,
    ngx_http_sf_oauth_node_t *rec)
{
    u_char                     ctx[NGX_HTTP_SF_OAUTH_ZONE_NAME_MAX
                                   + NGX_HTTP_SF_OAUTH_NAME_MAX
                                   + NGX_INT_T_LEN + 2];
    ngx_str_t                  context;
    ngx_uint_t                 n, i;
    const char                *why;
    ngx_http_sf_oauth_zone_t  *zone;
    ngx_http_sf_oauth_node_t  *recs;

    zone = cred->shm_zone->data;

    if (blob->type != REDIS_REPLY_STRING || blob->len == 0) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": fleet generation %ui "
                      "has no record in Redis; it is ignored", &cred->name,
                      generation);
        return NGX_ERROR;
    }

    if (blob->len > NGX_HTTP_SF_OAUTH_RECORD_MAX) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": the record of fleet "
                      "generation %ui in Redis is larger than %d bytes, "
                      "which no record is; it is ignored", &cred->name,
                      generation, NGX_HTTP_SF_OAUTH_RECORD_MAX);
        return NGX_ERROR;
    }

    ngx_http_sf_oauth_fleet_context(cred, generation, ctx, &context);

    why = NULL;
    recs = NULL;
    n = 0;

    if (ngx_http_sf_oauth_codec_decode(zone->key, &context,
                                       (u_char *) blob->str, blob->len,
                                       &recs, &n, &why, ngx_cycle->log)
        != NGX_OK)
    {
        /* a fingerprint, and not this key's: 8 hex digits, none other */

        for (i = 0; fp->len == NGX_HTTP_SF_OAUTH_FP_LEN && i < fp->len; i++) {
            if (!isxdigit((u_char) fp->str[i])) {
                break;
            }
        }

        if (i == NGX_HTTP_SF_OAUTH_FP_LEN
            && ngx_memcmp(fp->str, zone->key_fp, NGX_HTTP_SF_OAUTH_FP_LEN)
               != 0)
        {
            return NGX_DECLINED;
        }
    }

    if (recs == NULL || n != 1) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": the record of fleet "
                      "generation %ui in Redis is not used: %s (another "
                      "zone's or credential's record, another key, or a "
                      "changed value)", &cred->name, generation,
                      why ? why : "it holds more than one record");
        goto failed;
    }

    *rec = recs[0];

    ngx_explicit_memzero(recs, sizeof(ngx_http_sf_oauth_node_t));
    ngx_free(recs);

    if (rec->name_len != cred->name.len
        || ngx_strncmp(rec->name, cred->name.data, cred->name.len) != 0
        || !ngx_http_sf_oauth_store_same(cred, rec)
        || (rec->token_len == 0 && rec->refresh_len == 0))
    {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": the record of fleet "
                      "generation %ui in Redis is for another configuration "
                      "of the credential; it is ignored", &cred->name,
                      generation);
        ngx_explicit_memzero(rec, sizeof(ngx_http_sf_oauth_node_t));
        return NGX_ERROR;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": the record of fleet "
                   "generation %ui decrypts", &cred->name, generation);

    if (ngx_http_sf_oauth_store_fleet_key(cred, 0)) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": the record of fleet "
                      "generation %ui in Redis decrypts with this node's "
                      "key: the key mismatch is over, and token requests "
                      "are made again", &cred->name, generation);
    }

    return NGX_OK;

failed:

    if (recs) {
        ngx_explicit_memzero(recs, n * sizeof(ngx_http_sf_oauth_node_t));
        ngx_free(recs);
    }

    return NGX_ERROR;
}


/*
 * An error reply to a script of the fleet (at most 200 bytes of it: it is
 * Redis's text, never a secret of the module's).  A missing right of an
 * ACL user (NOPERM, or a command refused inside the script) says what the
 * user needs: an ACL written for another version of the module may lack a
 * command that the scripts run now.
 */

static void
ngx_http_sf_oauth_fleet_error(ngx_http_sf_oauth_cred_t *cred,
    const char *what, redisReply *r)
{
    size_t                      len;
    ngx_uint_t                  acl;
    ngx_http_sf_oauth_zone_t   *zone;
    ngx_http_sf_oauth_redis_t  *rd;

    zone = cred->shm_zone->data;
    rd = zone->redis;
    len = ngx_min(r->len, 200);

    acl = (len >= 6 && ngx_strncmp(r->str, "NOPERM", 6) == 0)
          || ngx_strlcasestrn((u_char *) r->str, (u_char *) r->str + len,
                              (u_char *) "can't run this command", 22 - 1)
             != NULL
          || ngx_strlcasestrn((u_char *) r->str, (u_char *) r->str + len,
                              (u_char *) "no permissions", 14 - 1)
             != NULL;

    if (!acl) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": %s: \"%*s\"",
                      &cred->name, what, len, r->str);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "sf_oauth: credential \"%V\": %s: \"%*s\"; the ACL user "
                  "of sf_oauth_redis \"%V\" needs the commands EVAL, GET, "
                  "GETRANGE, SET, DEL, PEXPIRE, PUBLISH, SUBSCRIBE and PING, "
                  "the keys \"%V*\" and the channel \"%V\" (ACL SETUSER "
                  "USER +eval +get +getrange +set +del +pexpire +publish "
                  "+subscribe +ping ~%V* &%V)",
                  &cred->name, what, len, r->str, &rd->name, &rd->prefix,
                  &rd->channel, &rd->prefix, &rd->channel);
}


/*
 * Whether a worker that took the fleet's lease at "generation", and could
 * not read the record there (decode's rc, NGX_ABORT if not read), must not
 * refresh with its own refresh token: that is older than the fleet's when
 * another key wrote a generation newer than the zone's, or any generation
 * since the key mismatch was found.  A record of another key at this
 * node's own generation is not: the key changed on this node, which holds
 * that generation's refresh token, and the others will follow.
 */

static ngx_uint_t
ngx_http_sf_oauth_fleet_refused(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, ngx_int_t rc, redisReply *fp)
{
    ngx_uint_t                 fleet, local, dirty;
    ngx_http_sf_oauth_zone_t  *zone;

    if (ngx_http_sf_oauth_store_fleet_key_mismatch(cred)) {
        return 1;
    }

    if (rc != NGX_DECLINED) {
        return 0;
    }

    fleet = ngx_http_sf_oauth_store_fleet_view(cred, &local, &dirty);

    if (generation > fleet) {
        ngx_http_sf_oauth_fleet_mismatch(cred, generation, fp);
        return 1;
    }

    zone = cred->shm_zone->data;

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "sf_oauth: credential \"%V\": the record of fleet "
                  "generation %ui in Redis is encrypted with another key "
                  "(fingerprint %*s) than this node's (%*s): this node "
                  "holds that generation's refresh token, refreshes with "
                  "it, and writes the new token with its own key, which "
                  "every node of the fleet must then have",
                  &cred->name, generation, (size_t) fp->len, fp->str,
                  (size_t) NGX_HTTP_SF_OAUTH_FP_LEN, zone->key_fp);

    return 0;
}


/*
 * The fleet's record is another key's: said once per node and key, in
 * fingerprints only; this node makes no token request until a record
 * decrypts (ngx_http_sf_oauth_fleet_decode ends it).
 */

static void
ngx_http_sf_oauth_fleet_mismatch(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, redisReply *fp)
{
    ngx_http_sf_oauth_zone_t  *zone;

    if (ngx_http_sf_oauth_store_fleet_key(cred, 1)) {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "sf_oauth: credential \"%V\": the record of fleet "
                       "generation %ui is another key's, as said before",
                       &cred->name, generation);
        return;
    }

    zone = cred->shm_zone->data;

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "sf_oauth: credential \"%V\": the record of fleet "
                  "generation %ui in Redis is encrypted with another key "
                  "(fingerprint %*s) than this node's sf_oauth_zone \"%V\" "
                  "key=\"%V\" (fingerprint %*s): this node cannot know the "
                  "fleet's refresh token, and its own may have been "
                  "rotated out, so it makes no token request and requests "
                  "that need a new token get 502; give every node of the "
                  "fleet the same key= file and reload this node.  It ends "
                  "when a record in Redis decrypts with this node's key "
                  "(its key fixed and reloaded, or a token stored by a "
                  "node with this key)",
                  &cred->name, generation, (size_t) fp->len, fp->str,
                  &zone->name, &zone->key_path,
                  (size_t) NGX_HTTP_SF_OAUTH_FP_LEN, zone->key_fp);
}


/*
 * A newer generation's record, copied into the zone; NGX_DECLINED: it is
 * another key's, NGX_ERROR: it cannot be used
 */

static ngx_int_t
ngx_http_sf_oauth_fleet_adopt(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, redisReply *blob, redisReply *fp,
    ngx_http_sf_oauth_node_t *rec)
{
    ngx_int_t  rc;

    rc = ngx_http_sf_oauth_fleet_decode(cred, generation, blob, fp, rec);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_sf_oauth_store_fleet(cred, rec, generation) == NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "sf_oauth: credential \"%V\": token of fleet "
                      "generation %ui from Redis", &cred->name, generation);

        ngx_http_sf_oauth_state_save(cred);
    }

    return NGX_OK;
}


/* what a record is bound to: "ZONE:CRED:GENERATION" */

static void
ngx_http_sf_oauth_fleet_context(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, u_char *buf, ngx_str_t *context)
{
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;

    context->data = buf;
    context->len = ngx_sprintf(buf, "%V:%V:%ui", &zone->name, &cred->name,
                               generation)
                   - buf;
}


/*
 * An EVAL of a script over the credential's keys; "action" is for the log
 * of the connection while the reply is waited for
 */

static ngx_int_t
ngx_http_sf_oauth_fleet_eval(ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *script, char *action, ngx_uint_t nkeys, const char **keys,
    ngx_uint_t nargs, ngx_str_t *args, ngx_http_sf_oauth_reply_pt handler,
    void *data)
{
    u_char                     nk[NGX_INT_T_LEN];
    ngx_str_t                  argv[16];
    ngx_uint_t                 i, n;
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;

    if (3 + nkeys + nargs > 16) {
        return NGX_ERROR;
    }

    ngx_str_set(&argv[0], "EVAL");
    argv[1] = *script;
    argv[2].data = nk;
    argv[2].len = ngx_sprintf(nk, "%ui", nkeys) - nk;

    n = 3;

    for (i = 0; i < nkeys; i++) {
        if (ngx_http_sf_oauth_fleet_key(cred, keys[i], &argv[n]) == NULL) {
            return NGX_ERROR;
        }

        n++;
    }

    for (i = 0; i < nargs; i++) {
        argv[n++] = args[i];
    }

    return ngx_http_sf_oauth_redis_command(zone->redis, n, argv, handler,
                                           data, action);
}


/* "PREFIX ZONE:CRED:WHAT", in one of four buffers: a script's keys */

static ngx_str_t *
ngx_http_sf_oauth_fleet_key(ngx_http_sf_oauth_cred_t *cred, const char *what,
    ngx_str_t *key)
{
    static u_char              buf[4][NGX_HTTP_SF_OAUTH_URL_MAX];
    static ngx_uint_t          next;
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;

    if (zone->redis->prefix.len + zone->name.len + cred->name.len
        + ngx_strlen(what) + 2 > NGX_HTTP_SF_OAUTH_URL_MAX)
    {
        return NULL;
    }

    key->data = buf[next];
    next = (next + 1) % 4;

    key->len = ngx_sprintf(key->data, "%V%V:%V:%s", &zone->redis->prefix,
                           &zone->name, &cred->name, what)
               - key->data;

    return key;
}


/* a lease owner for this attempt: "host:pid:random" */

static void
ngx_http_sf_oauth_fleet_new_owner(ngx_http_sf_oauth_cred_t *cred)
{
    size_t  n;

    n = ngx_min(ngx_cycle->hostname.len, NGX_HTTP_SF_OAUTH_OWNER_MAX - 32);

    cred->rt.fleet_owner_len = ngx_sprintf(cred->rt.fleet_owner, "%*s:%P:%08xD",
                                           n, ngx_cycle->hostname.data, ngx_pid,
                                           (uint32_t) ngx_random())
                            - cred->rt.fleet_owner;
}


static ngx_int_t
ngx_http_sf_oauth_fleet_number(redisReply *r, ngx_uint_t *n)
{
    if (r->type != REDIS_REPLY_INTEGER || r->integer < 0) {
        return NGX_ERROR;
    }

    *n = (ngx_uint_t) r->integer;

    return NGX_OK;
}


static void
ngx_http_sf_oauth_fleet_noop(void *reply, void *data)
{
}


/* a token got while Redis was unreachable is written back: nothing else */

static void
ngx_http_sf_oauth_fleet_written(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t answer, ngx_http_sf_oauth_node_t *rec, ngx_uint_t generation)
{
    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "sf_oauth: credential \"%V\": the token got while Redis "
                   "was unreachable: %s (generation %ui)", &cred->name,
                   answer == NGX_HTTP_SF_OAUTH_FLEET_STORED ? "written back"
                   : answer == NGX_HTTP_SF_OAUTH_FLEET_STALE
                     ? "a newer one was there" : "not written yet",
                   generation);

    cred->rt.fleet_syncing = 0;

    if (cred->rt.fleet_sync_again) {
        cred->rt.fleet_sync_again = 0;

        if (answer != NGX_HTTP_SF_OAUTH_FLEET_DOWN) {
            ngx_http_sf_oauth_fleet_sync(cred);
        }
    }
}
