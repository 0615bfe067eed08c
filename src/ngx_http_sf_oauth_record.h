
/*
 * A credential's record in the shared memory zone (ngx_http_sf_oauth_node_t)
 * and the zone's header (ngx_http_sf_oauth_sh_t): what every worker of a
 * node shares, under the zone's lock.  The state file and the fleet's
 * records are made of the same fields (ngx_http_sf_oauth_codec.c).
 *
 * The layout of these may change from one version of the module to the
 * next: a zone is only ever shared by processes that run one loaded copy
 * of it.  A reload after the .so was replaced at the same path keeps the
 * copy loaded (dlopen() of a path already loaded returns it: the new .so
 * takes effect at a restart or a binary upgrade, whose zones are new); a
 * reload whose load_module names another path loads another copy, whose
 * zones have another tag (&ngx_http_sf_oauth_module), so that nginx gives
 * them new memory and ngx_http_sf_oauth_zone.c neither reuses nor carries
 * the old copy's records (they start from the state file).  Records cross
 * versions only as the codec's JSON, whose new fields are optional.
 *
 * Included by ngx_http_sf_oauth.h, after its limits; never on its own.
 */


#ifndef _NGX_HTTP_SF_OAUTH_RECORD_H_INCLUDED_
#define _NGX_HTTP_SF_OAUTH_RECORD_H_INCLUDED_


typedef struct {
    ngx_queue_t                  queue;

    /*
     * The credential's fingerprints when the record was made: see
     * ngx_http_sf_oauth_fingerprint_conf and ngx_http_sf_oauth_store_same.
     * rt_fp is 0 in a record of the grants other than the refresh
     * token's, and in a state file or fleet record written before it was.
     */
    uint64_t                     conf_fp;
    uint64_t                     rt_fp;
    uint64_t                     secret_fp;
    ngx_uint_t                   generation;
    ngx_uint_t                   state;

    ngx_pid_t                    lease_pid;
    ngx_msec_t                   lease_deadline;

    ngx_msec_t                   backoff_until;
    ngx_uint_t                   failures;
    ngx_uint_t                   held;      /* FAILED, the operator's to fix */
    time_t                       error_time;

    /* 401s: tokens in a row whose replays got 401 too, and the last drop */
    ngx_uint_t                   uncured;
    ngx_uint_t                   uncured_generation;
    ngx_msec_t                   rejected_at;

    /* the newest token that a replay succeeded with: it cured a 401 */
    ngx_uint_t                   cured_generation;

    /* BUSY answers in a row, and no token request before busy_until */
    ngx_uint_t                   busy;
    ngx_msec_t                   busy_until;

    /*
     * A reload changed the credential, and requests of the workers before
     * it wait for a token that only the new workers can get (see
     * ngx_http_sf_oauth_store_handover)
     */
    ngx_uint_t                   wanted;

    /*
     * A reload moved the record to another zone (resized, renamed, or
     * the credential's new zone): in this old record, "moved" is set, no
     * token request starts, and the outcome of the one in flight is also
     * posted to the zone "sf_oauth_carry"; in the new record, "carried"
     * says that the lease (lease_pid, lease_deadline) is a worker's of
     * the configuration before, whose outcome comes from there
     * (ngx_http_sf_oauth_carry.c)
     */
    ngx_uint_t                   moved;
    ngx_uint_t                   carried;

    ngx_uint_t                   invalidations;
    ngx_uint_t                   replays;

    time_t                       token_time;
    uint64_t                     issued_at;

    /*
     * When the token was got, in ms of the wall clock of the node that got
     * it (this one, or another of the fleet); 0: not known
     */
    uint64_t                     token_ms;

    /*
     * The token came from a record (Redis, the state file, a reload's
     * carry), not from a token request of this zone: see
     * ngx_http_sf_oauth_wait_is_stale_replay()
     */
    ngx_uint_t                   token_adopted;

    /* for the refresh ahead of expiry: when the token was got, last used */
    ngx_msec_t                   token_msec;
    ngx_msec_t                   last_use;
    ngx_uint_t                   ahead_refreshes;

    /* what introspection said: the token of exp_generation expires at exp */
    time_t                       exp;
    ngx_uint_t                   exp_generation;
    ngx_uint_t                   introspections;

    ngx_uint_t                   token_requests;
    ngx_uint_t                   token_failures;

    /* for the metrics: see ngx_http_sf_oauth_metrics.c */
    ngx_uint_t                   token_ok;
    ngx_uint_t                   token_transient;
    ngx_uint_t                   token_operator;
    ngx_uint_t                   token_dropped;
    ngx_uint_t                   wait_timeouts;
    ngx_uint_t                   requests[NGX_HTTP_SF_OAUTH_STATUSES];
    ngx_uint_t                   duration_count;
    ngx_msec_t                   duration_sum;
    ngx_uint_t                   duration_bucket[NGX_HTTP_SF_OAUTH_BUCKETS];
    ngx_uint_t                   api_used;
    ngx_uint_t                   api_limit;
    time_t                       api_time;
    ngx_msec_t                   api_msec;

    /*
     * The fleet (sf_oauth_zone redis=): the Redis generation of the token
     * here, whether it was got while Redis was unreachable and is still to
     * be written back, and the last lease owner seen
     */
    ngx_uint_t                   fleet_generation;
    ngx_uint_t                   fleet_dirty;
    size_t                       fleet_owner_len;
    u_char                       fleet_owner[NGX_HTTP_SF_OAUTH_OWNER_MAX];

    /*
     * The fingerprint of the zone's key when the fleet's record was found
     * written with another key: the mismatch lasts while the key is the
     * same and no record decrypts
     */
    u_char                       fleet_key_mismatch[NGX_HTTP_SF_OAUTH_FP_LEN];

    /*
     * After the zone's Redis primary changed (failovers in the header):
     * the change this record has seen, the fleet generation that the new
     * primary held when first read since, and whether it has held a newer
     * one since (a lease of the old primary's was released by its owner's
     * write-back: the quarantine is over for this credential)
     */
    ngx_uint_t                   fleet_failover;
    ngx_uint_t                   fleet_failover_base;
    ngx_uint_t                   fleet_released;

    size_t                       name_len;
    size_t                       token_len;
    size_t                       refresh_len;
    size_t                       url_len;
    size_t                       error_len;

    /* the identity of the token's user, from the "id" URL of the answer */
    size_t                       org_id_len;
    size_t                       user_id_len;
    u_char                       org_id[NGX_HTTP_SF_OAUTH_ID_MAX];
    u_char                       user_id[NGX_HTTP_SF_OAUTH_ID_MAX];

    /* the identity service's answer about user_id, once read */
    ngx_uint_t                   identity_known;
    size_t                       field_len[NGX_HTTP_SF_OAUTH_FIELDS];
    u_char                       field[NGX_HTTP_SF_OAUTH_FIELDS]
                                      [NGX_HTTP_SF_OAUTH_FIELD_MAX];

    u_char                       token_fp[NGX_HTTP_SF_OAUTH_FP_LEN];
    u_char                       name[NGX_HTTP_SF_OAUTH_NAME_MAX];
    u_char                       token[NGX_HTTP_SF_OAUTH_TOKEN_MAX];
    u_char                       refresh[NGX_HTTP_SF_OAUTH_REFRESH_MAX];
    u_char                       instance_url[NGX_HTTP_SF_OAUTH_URL_MAX];
    u_char                       error[NGX_HTTP_SF_OAUTH_ERROR_MAX];
} ngx_http_sf_oauth_node_t;

/* the counters of a record that ngx_http_sf_oauth_store_count() adds to */
#define NGX_HTTP_SF_OAUTH_COUNT_REPLAYS                                      \
    offsetof(ngx_http_sf_oauth_node_t, replays)
#define NGX_HTTP_SF_OAUTH_COUNT_WAIT_TIMEOUTS                                \
    offsetof(ngx_http_sf_oauth_node_t, wait_timeouts)
#define NGX_HTTP_SF_OAUTH_COUNT_DROPPED                                      \
    offsetof(ngx_http_sf_oauth_node_t, token_dropped)
#define NGX_HTTP_SF_OAUTH_COUNT_TOKEN_REQUESTS                               \
    offsetof(ngx_http_sf_oauth_node_t, token_requests)


typedef struct {
    ngx_queue_t                  nodes;

    /* the worker writing the state file, and whether to write once more */
    ngx_pid_t                    writer;
    ngx_uint_t                   dirty;

    /* a reload resized the zone: its records went to a new zone */
    ngx_uint_t                   retired;

    /* Redis is unreachable, and a node's worker has said so */
    ngx_uint_t                   outage;

    /*
     * The fleet's Redis primary: the run_id of the server last seen, the
     * changes seen (failovers) and when the last one was (ms): no fleet
     * lease is taken for a lease's time to live after it
     */
    size_t                       run_id_len;
    u_char                       run_id[NGX_HTTP_SF_OAUTH_RUN_ID_LEN];
    /* the keys' place on it: a CRC of the block's prefix and database */
    uint32_t                     place;
    ngx_uint_t                   failovers;
    ngx_msec_t                   failover_at;

    /*
     * Since when (ms; 0: not) Redis is unreachable, and refuses the lease
     * script (READONLY...), and when it last refused: the failover wait
     * counts from the earlier; and whether a node's worker has said that
     * requests wait
     */
    ngx_msec_t                   down_since;
    ngx_msec_t                   refused_since;
    ngx_msec_t                   refused_last;
    ngx_uint_t                   wait_logged;
} ngx_http_sf_oauth_sh_t;


/*
 * The zone "sf_oauth_carry" (ngx_http_sf_oauth_carry.c), between the
 * workers before a reload that moved records to other zones and those
 * after it: the outcomes of token requests that were in flight then
 * (OUTCOME, a copy of the old record once the outcome is in it, keyed by
 * the credential's name and the lease, its pid and deadline), an old
 * worker's wish for a token newer than its record's generation (WANT),
 * and the new workers' answer to it (FORWARD, a copy of the new record),
 * each keyed by the name.  Its size never changes, so every reload hands
 * it over.
 */
#define NGX_HTTP_SF_OAUTH_CARRY_SLOTS      64
#define NGX_HTTP_SF_OAUTH_CARRY_TTL        60000

#define NGX_HTTP_SF_OAUTH_CARRY_OUTCOME    1
#define NGX_HTTP_SF_OAUTH_CARRY_WANT       2
#define NGX_HTTP_SF_OAUTH_CARRY_FORWARD    3

typedef struct {
    ngx_uint_t                   kind;      /* 0: free */
    ngx_pid_t                    pid;
    ngx_msec_t                   deadline;
    ngx_msec_t                   expires;
    ngx_http_sf_oauth_node_t     rec;
} ngx_http_sf_oauth_carry_slot_t;

typedef struct {
    ngx_http_sf_oauth_carry_slot_t  slot[NGX_HTTP_SF_OAUTH_CARRY_SLOTS];
} ngx_http_sf_oauth_carry_sh_t;


/*
 * The web server flow (ngx_http_sf_oauth_connect.c): a connection started
 * from the console and not finished yet, in the module's own zone
 * "sf_oauth_connect", so that any worker can take its callback.  "state"
 * and the PKCE verifier are base64url of random bytes; the browser's
 * cookie is kept as its SHA-256 only.  After an exchange whose user or
 * org differs from the record's, the tokens wait here for the operator's
 * confirmation ("confirm"), for at most as long as a flow.
 */
#define NGX_HTTP_SF_OAUTH_CONNECT_PENDING   64
#define NGX_HTTP_SF_OAUTH_CONNECT_TTL       600
#define NGX_HTTP_SF_OAUTH_CONNECT_RANDOM    16
#define NGX_HTTP_SF_OAUTH_CONNECT_STATE     22      /* base64url of 16 */
#define NGX_HTTP_SF_OAUTH_CONNECT_VERIFIER  64      /* base64url of 48 */

typedef struct {
    ngx_uint_t                   in_use;
    ngx_uint_t                   used;
    ngx_uint_t                   confirm;
    time_t                       created;

    u_char                       state[NGX_HTTP_SF_OAUTH_CONNECT_STATE];
    u_char                       cookie[32];
    u_char                       verifier[NGX_HTTP_SF_OAUTH_CONNECT_VERIFIER];

    size_t                       name_len;
    u_char                       name[NGX_HTTP_SF_OAUTH_NAME_MAX];
    size_t                       redirect_len;
    u_char                       redirect[NGX_HTTP_SF_OAUTH_URL_MAX];

    /* with "confirm": what the exchange brought */
    uint64_t                     issued_at;
    size_t                       token_len;
    size_t                       refresh_len;
    size_t                       url_len;
    size_t                       org_id_len;
    size_t                       user_id_len;
    u_char                       org_id[NGX_HTTP_SF_OAUTH_ID_MAX];
    u_char                       user_id[NGX_HTTP_SF_OAUTH_ID_MAX];
    u_char                       token[NGX_HTTP_SF_OAUTH_TOKEN_MAX];
    u_char                       refresh[NGX_HTTP_SF_OAUTH_REFRESH_MAX];
    u_char                       instance_url[NGX_HTTP_SF_OAUTH_URL_MAX];
} ngx_http_sf_oauth_pending_t;

/* the zone "sf_oauth_connect": the form tokens' key, the pending flows */
typedef struct {
    u_char                       key[32];
    ngx_http_sf_oauth_pending_t  pending[NGX_HTTP_SF_OAUTH_CONNECT_PENDING];
} ngx_http_sf_oauth_connect_sh_t;


#endif /* _NGX_HTTP_SF_OAUTH_RECORD_H_INCLUDED_ */
