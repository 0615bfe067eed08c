
/*
 * ngx_http_sf_oauth_module: OAuth for Salesforce APIs in front of proxy_pass.
 *
 * Declarations shared by the module's source files.  Each file holds one
 * concern: the source map in HACKING.md says which, one line per file.
 * The types are in three headers that this one includes: the zone's
 * record (ngx_http_sf_oauth_record.h), what the configuration makes
 * (ngx_http_sf_oauth_conf.h) and a request's context
 * (ngx_http_sf_oauth_request.h).  This one holds the limits, the types
 * that files hand each other, and each file's exported functions.
 *
 * Every source file includes this header before any other: nginx's rule
 * is that ngx_config.h and ngx_core.h come first, so that the system's and
 * the libraries' headers (OpenSSL, libcurl, cJSON, libxml2, zlib) are read
 * with the feature macros nginx sets.  Read otherwise, they break the
 * build against nginx 1.28 and later (src/event/ngx_event_udp.h: field
 * 'pkt6' has incomplete type).
 *
 * Calls go one way: the request handler and the filter ask the store and
 * the refresh; the refresh asks the store, the state file and the HTTP
 * client; the client calls nobody, it reports through a callback.  An
 * exported function is named after the file that defines it.
 */


#ifndef _NGX_HTTP_SF_OAUTH_H_INCLUDED_
#define _NGX_HTTP_SF_OAUTH_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


/*
 * Inclusive maximum lengths, in bytes, of what the configuration, the
 * token parser, the zone record and the state file all accept: a value is
 * refused where "len > MAX", and a record's buffer holds exactly MAX bytes,
 * with no room for a terminating zero.
 */
#define NGX_HTTP_SF_OAUTH_NAME_MAX       64
#define NGX_HTTP_SF_OAUTH_ZONE_NAME_MAX  64
#define NGX_HTTP_SF_OAUTH_TOKEN_MAX      4096
#define NGX_HTTP_SF_OAUTH_REFRESH_MAX    2048
#define NGX_HTTP_SF_OAUTH_URL_MAX        1024
#define NGX_HTTP_SF_OAUTH_ERROR_MAX      512
#define NGX_HTTP_SF_OAUTH_SECRET_MAX     4096
#define NGX_HTTP_SF_OAUTH_BODY_MAX       65536

/* a SOAP envelope's head, up to its Body, and the sessionIds in it */
#define NGX_HTTP_SF_OAUTH_HEAD_MAX       65536
#define NGX_HTTP_SF_OAUTH_EDITS_MAX      8

/* how much of an error response is read to tell a dead session */
#define NGX_HTTP_SF_OAUTH_INSPECT_MAX    65536

/*
 * The most of a Streaming API (CometD) request and of its answer read to
 * tell a dead session; a longer answer (event deliveries) passes unread
 */
#define NGX_HTTP_SF_OAUTH_BAYEUX_MAX     8192

/* the proxy_read_timeout a CometD location needs: a long poll is 110 s */
#define NGX_HTTP_SF_OAUTH_COMETD_TIMEOUT 120000

/* the most bytes of an envelope's XML declaration */
#define NGX_HTTP_SF_OAUTH_XMLDECL_MAX    1024

/*
 * A gzip-compressed SOAP envelope: the default most it inflates to (the
 * SOAP API's own request limit is 50 MB) and times its compressed size;
 * what it may inflate to whatever the ratio; how much is inflated in one
 * turn of the event loop
 */
#define NGX_HTTP_SF_OAUTH_INFLATE_MAX    (50 * 1024 * 1024)
#define NGX_HTTP_SF_OAUTH_INFLATE_RATIO  100
#define NGX_HTTP_SF_OAUTH_INFLATE_FREE   (1024 * 1024)
#define NGX_HTTP_SF_OAUTH_INFLATE_SLICE  (256 * 1024)

/* a Salesforce record id: 15 characters, or 18 with its checksum */
#define NGX_HTTP_SF_OAUTH_ID_MAX         18

/*
 * What the identity service says of the token's user, for SOAP login()
 * emulation: these fields of its answer, each at most FIELD_MAX bytes.
 */
#define NGX_HTTP_SF_OAUTH_USERNAME       0
#define NGX_HTTP_SF_OAUTH_EMAIL          1
#define NGX_HTTP_SF_OAUTH_FULL_NAME      2
#define NGX_HTTP_SF_OAUTH_LANGUAGE       3
#define NGX_HTTP_SF_OAUTH_LOCALE         4
#define NGX_HTTP_SF_OAUTH_TIMEZONE       5
#define NGX_HTTP_SF_OAUTH_USER_TYPE      6
#define NGX_HTTP_SF_OAUTH_FIELDS         7
#define NGX_HTTP_SF_OAUTH_FIELD_MAX      128

/* how long a failed identity request is not tried again, milliseconds */
#define NGX_HTTP_SF_OAUTH_IDENTITY_RETRY 60000

/* a fleet lease's owner: "host:pid:random", cut */
#define NGX_HTTP_SF_OAUTH_OWNER_MAX      96

/*
 * The largest fleet record: the codec's 36-byte header and the JSON of one
 * record, whose strings at their maximum (the access and refresh tokens,
 * instance_url, ids: printable, never escaped; the credential's name, six
 * times over if every character were escaped) and names and numbers make
 * 7.9 KB at most: 16 KiB.  The scripts return no more of a value in
 * Redis's record key than this and a byte, and a longer one is bad data.
 */
#define NGX_HTTP_SF_OAUTH_RECORD_MAX     16384

/*
 * The largest reply that Redis may send: a record, a lease owner and a
 * few integers make 16.6 KB at most, twice that is the cap.  A reply that
 * announces or accumulates more is a protocol error: the connection is
 * dropped, as if Redis were unreachable.
 */
#define NGX_HTTP_SF_OAUTH_REDIS_REPLY_MAX  32768

/* how many recent secrets of a credential the log redaction keeps */
#define NGX_HTTP_SF_OAUTH_SEEN           4

/* hex characters of a fingerprint: the only form a secret is ever logged in */
#define NGX_HTTP_SF_OAUTH_FP_LEN         8

/* a Redis server's run_id: 40 hex digits */
#define NGX_HTTP_SF_OAUTH_RUN_ID_LEN     40

/* what ngx_http_sf_oauth_store_fleet_primary() saw change */
#define NGX_HTTP_SF_OAUTH_FLEET_NEW_PRIMARY  1
#define NGX_HTTP_SF_OAUTH_FLEET_NEW_PLACE    2

/* how long past the token request timeout a refresh lease stays valid */
#define NGX_HTTP_SF_OAUTH_LEASE_SLACK    2000

/* how often a waiting request re-reads the zone, bounds in milliseconds */
#define NGX_HTTP_SF_OAUTH_POLL_MIN       5
#define NGX_HTTP_SF_OAUTH_POLL_MAX       50

/*
 * The interval between refreshes caused by 401s once tokens that such a
 * refresh got were rejected too (a 401 no refresh cures): it doubles from
 * the first to the second bound, in milliseconds.
 */
#define NGX_HTTP_SF_OAUTH_REJECT_MIN     1000
#define NGX_HTTP_SF_OAUTH_REJECT_MAX     15000

/* the wall clock in milliseconds, as of the last time update */
#define ngx_http_sf_oauth_wall_ms(tp)                                        \
    ((tp) = ngx_timeofday(), (uint64_t) (tp)->sec * 1000 + (tp)->msec)

/*
 * The r->buffered bit of a request held for a replay.  In stock nginx
 * 1.22 to 1.29, r->buffered holds NGX_HTTP_SSI_BUFFERED 0x01,
 * NGX_HTTP_SUB_BUFFERED 0x02, NGX_HTTP_COPY_BUFFERED 0x04,
 * NGX_HTTP_WRITE_BUFFERED 0x10 and NGX_HTTP_GZIP_BUFFERED 0x20.  The
 * image filter's NGX_HTTP_IMAGE_BUFFERED is 0x08 too, but it is set on
 * r->connection->buffered, another field, and only while the image
 * filter reads a response body: a held 401 never reaches that filter
 * (this module's header filter runs before it).  t/19-scope.t runs
 * image_filter in an sf_oauth location.
 */
#define NGX_HTTP_SF_OAUTH_BUFFERED       0x08


/* state of a credential's record in the zone */
#define NGX_HTTP_SF_OAUTH_EMPTY          0
#define NGX_HTTP_SF_OAUTH_VALID          1
#define NGX_HTTP_SF_OAUTH_FAILED         2

/* what a request did, as $sf_oauth_status reports it */
#define NGX_HTTP_SF_OAUTH_HIT            1
#define NGX_HTTP_SF_OAUTH_WAIT           2
#define NGX_HTTP_SF_OAUTH_ERROR          3
#define NGX_HTTP_SF_OAUTH_RETRY          4
#define NGX_HTTP_SF_OAUTH_STATUSES       5

/* the token request duration histogram's buckets, see the metrics */
#define NGX_HTTP_SF_OAUTH_BUCKETS        9

/* what a 401 means for the token, see ngx_http_sf_oauth_store_rejected */
#define NGX_HTTP_SF_OAUTH_REJ_NEWER      0
#define NGX_HTTP_SF_OAUTH_REJ_DROPPED    1
#define NGX_HTTP_SF_OAUTH_REJ_LATER      2

/* the calls of a SOAP envelope that the module can answer itself */
#define NGX_HTTP_SF_OAUTH_CALL_OTHER     0
#define NGX_HTTP_SF_OAUTH_CALL_LOGIN     1
#define NGX_HTTP_SF_OAUTH_CALL_LOGOUT    2
/* the call's start tag lies past NGX_HTTP_SF_OAUTH_HEAD_MAX */
#define NGX_HTTP_SF_OAUTH_CALL_UNKNOWN   3

/* the API a request goes to, from its URI */
#define NGX_HTTP_SF_OAUTH_REST           0
#define NGX_HTTP_SF_OAUTH_SOAP           1
#define NGX_HTTP_SF_OAUTH_BULK           2
#define NGX_HTTP_SF_OAUTH_GRPC           3
#define NGX_HTTP_SF_OAUTH_COMETD         4

/* the Bayeux channel of a CometD request whose answer may be held */
#define NGX_HTTP_SF_OAUTH_BAYEUX_NONE       0
#define NGX_HTTP_SF_OAUTH_BAYEUX_HANDSHAKE  1
#define NGX_HTTP_SF_OAUTH_BAYEUX_CONNECT    2

/* what a CometD answer says: see ngx_http_sf_oauth_bayeux.c */
#define NGX_HTTP_SF_OAUTH_BAYEUX_PASS       0
#define NGX_HTTP_SF_OAUTH_BAYEUX_REPLAY     1
#define NGX_HTTP_SF_OAUTH_BAYEUX_RECONNECT  2

/* the OAuth grants a credential can use */
#define NGX_HTTP_SF_OAUTH_GRANT_REFRESH  0
#define NGX_HTTP_SF_OAUTH_GRANT_JWT      1
#define NGX_HTTP_SF_OAUTH_GRANT_CLIENT   2

/* the answer of a zone lookup */
#define NGX_HTTP_SF_OAUTH_GOT_TOKEN      0
#define NGX_HTTP_SF_OAUTH_GOT_ERROR      1
#define NGX_HTTP_SF_OAUTH_GOT_WAIT       2
#define NGX_HTTP_SF_OAUTH_GOT_LEASE      3

/* classes of token request failures */
#define NGX_HTTP_SF_OAUTH_TRANSIENT      0
#define NGX_HTTP_SF_OAUTH_OPERATOR       1
/* another request with the same refresh token is at Salesforce: retry soon */
#define NGX_HTTP_SF_OAUTH_BUSY           2

/* the first retry after a BUSY answer, in milliseconds; it doubles */
#define NGX_HTTP_SF_OAUTH_BUSY_RETRY     250


#include "ngx_http_sf_oauth_record.h"
#include "ngx_http_sf_oauth_conf.h"
#include "ngx_http_sf_oauth_request.h"


/* what a zone lookup hands back */
typedef struct {
    ngx_uint_t                   generation;

    /* with a token: "Bearer <token>", in the caller's pool, and its age */
    ngx_str_t                    authorization;
    uint64_t                     token_ms;
    ngx_uint_t                   token_adopted;

    ngx_str_t                    error;
    time_t                       retry_after;

    /*
     * With the lease: what the lease's token request sends, in the
     * caller's pool, which the refresh wipes: the refresh token, or with
     * "introspect" set the access token to introspect.
     */
    ngx_uint_t                   introspect;
    ngx_str_t                    secret;

    /*
     * With the lease: the fleet generation of the token being replaced,
     * and whether that token was got while Redis was unreachable (its
     * generation then says nothing of its age)
     */
    ngx_uint_t                   fleet_generation;
    ngx_uint_t                   fleet_unsynced;
} ngx_http_sf_oauth_lookup_t;


/* who the token's user is: the ids, and what the identity service said */
typedef struct {
    ngx_str_t                    org_id;
    ngx_str_t                    user_id;
    ngx_uint_t                   known;
    ngx_str_t                    field[NGX_HTTP_SF_OAUTH_FIELDS];
} ngx_http_sf_oauth_who_t;


/* a parsed token endpoint answer */
typedef struct {
    ngx_uint_t                   ok;
    ngx_uint_t                   active;
    time_t                       exp;
    ngx_uint_t                   error_class;

    /* how long the token request took */
    ngx_msec_t                   duration;

    ngx_str_t                    access_token;
    ngx_str_t                    instance_url;
    ngx_str_t                    refresh_token;
    uint64_t                     issued_at;

    /* from "id": https://login.salesforce.com/id/ORG_ID/USER_ID */
    ngx_str_t                    org_id;
    ngx_str_t                    user_id;

    /* what failed, for the log and the 502 body; never holds a secret */
    ngx_str_t                    error;
    /* what the operator should do about it */
    ngx_str_t                    hint;
} ngx_http_sf_oauth_token_t;


extern ngx_module_t  ngx_http_sf_oauth_module;

/*
 * nginx's proxy module: its location conf (ngx_http_proxy_loc_conf_t)
 * starts with its ngx_http_upstream_conf_t, which tells request buffering
 * and intercepted errors apart.
 */
extern ngx_module_t  ngx_http_proxy_module;

/* nginx's grpc module: its location conf starts the same way */
extern ngx_module_t  ngx_http_grpc_module;


/* block */
typedef struct {
    const char                  *kind;        /* "sf_oauth_credential" */
    ngx_str_t                   *name;
    ngx_flag_t                   world_readable;
} ngx_http_sf_oauth_owner_t;

char *ngx_http_sf_oauth_block_parse(ngx_conf_t *cf, const char *kind,
    ngx_str_t *name, ngx_command_t *commands, void *conf);
char *ngx_http_sf_oauth_block_secret(ngx_conf_t *cf,
    ngx_http_sf_oauth_owner_t *owner, const char *name, const char *file,
    ngx_str_t *value, ngx_str_t *path);
char *ngx_http_sf_oauth_block_read_secret(ngx_conf_t *cf,
    ngx_http_sf_oauth_owner_t *owner, const char *name, ngx_str_t *path,
    ngx_str_t *value);

/* what ngx_http_sf_oauth_block_read_file() finds wrong with a file */
#define NGX_HTTP_SF_OAUTH_FILE_UNREADABLE  1     /* with the errno */
#define NGX_HTTP_SF_OAUTH_FILE_NOT_FILE    2     /* not a regular file */
#define NGX_HTTP_SF_OAUTH_FILE_WORLD       3     /* others may read it */
#define NGX_HTTP_SF_OAUTH_FILE_LARGE       4

ngx_int_t ngx_http_sf_oauth_block_read_file(ngx_str_t *path,
    ngx_flag_t world_readable, u_char *buf, size_t size, ngx_str_t *value,
    ngx_err_t *err);

/* credential */
char *ngx_http_sf_oauth_credential_block(ngx_conf_t *cf,
    ngx_http_sf_oauth_cred_t *cred);
ngx_int_t ngx_http_sf_oauth_credential_unique(ngx_conf_t *cf,
    ngx_http_sf_oauth_main_conf_t *smcf);
ngx_int_t ngx_http_sf_oauth_credential_names(ngx_conf_t *cf,
    ngx_http_sf_oauth_main_conf_t *smcf);
ngx_http_sf_oauth_cred_t *ngx_http_sf_oauth_credential_find(
    ngx_http_sf_oauth_main_conf_t *smcf, ngx_str_t *name);

/* refresh ahead of expiry */
ngx_int_t ngx_http_sf_oauth_ahead_init(ngx_cycle_t *cycle);

/* zone: the records across reloads */
ngx_int_t ngx_http_sf_oauth_zone_init(ngx_shm_zone_t *shm_zone, void *data);
void ngx_http_sf_oauth_zone_commit(ngx_cycle_t *cycle, ngx_array_t *zones);

/* carry: the outcomes that reloads move to another zone */
char *ngx_http_sf_oauth_carry_conf(ngx_conf_t *cf);
ngx_int_t ngx_http_sf_oauth_carry_post(ngx_uint_t kind,
    ngx_http_sf_oauth_node_t *node, ngx_pid_t pid, ngx_msec_t deadline);
ngx_int_t ngx_http_sf_oauth_carry_take(ngx_uint_t kind,
    ngx_http_sf_oauth_node_t *node, ngx_pid_t pid, ngx_msec_t deadline,
    ngx_http_sf_oauth_node_t *out, ngx_uint_t drop);

/* store */
#define NGX_HTTP_SF_OAUTH_SAME_CONF  1
#define NGX_HTTP_SF_OAUTH_SAME_RT    2

ngx_uint_t ngx_http_sf_oauth_store_same(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *rec);
ngx_int_t ngx_http_sf_oauth_store_owns_node(ngx_http_sf_oauth_cred_t *cred);
ngx_uint_t ngx_http_sf_oauth_store_carried(ngx_http_sf_oauth_cred_t *cred);
ngx_int_t ngx_http_sf_oauth_store_relay(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_http_sf_oauth_lookup_t *lk);
ngx_int_t ngx_http_sf_oauth_store_can_lease(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *node);
ngx_int_t ngx_http_sf_oauth_store_lookup(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_http_sf_oauth_lookup_t *lk);
ngx_int_t ngx_http_sf_oauth_store_handover(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_http_sf_oauth_lookup_t *lk);
ngx_uint_t ngx_http_sf_oauth_store_changed(ngx_http_sf_oauth_cred_t *cred);
ngx_uint_t ngx_http_sf_oauth_store_not_connected(
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_node_t *node);
ngx_int_t ngx_http_sf_oauth_store_ahead(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_http_sf_oauth_lookup_t *lk, ngx_msec_t *next);
ngx_int_t ngx_http_sf_oauth_store_introspected(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, ngx_http_sf_oauth_token_t *tok, ngx_pool_t *pool,
    ngx_http_sf_oauth_lookup_t *lk);
ngx_int_t ngx_http_sf_oauth_store_lease_connect(
    ngx_http_sf_oauth_cred_t *cred);
void ngx_http_sf_oauth_store_result(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_token_t *tok);
void ngx_http_sf_oauth_store_record_token(ngx_http_sf_oauth_token_t *tok,
    ngx_http_sf_oauth_node_t *rec);
void ngx_http_sf_oauth_store_set_token(ngx_http_sf_oauth_node_t *node,
    ngx_http_sf_oauth_token_t *tok, ngx_http_sf_oauth_node_t *rec);
void ngx_http_sf_oauth_store_release(ngx_http_sf_oauth_cred_t *cred);
ngx_int_t ngx_http_sf_oauth_store_rejected(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, ngx_msec_t *until);
void ngx_http_sf_oauth_store_replayed(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, ngx_uint_t cured, ngx_log_t *log);
ngx_uint_t ngx_http_sf_oauth_store_uncured(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, ngx_uint_t *cured);
void ngx_http_sf_oauth_store_snapshot(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *copy);
ngx_int_t ngx_http_sf_oauth_store_tenant(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_str_t *url, ngx_str_t *org_id);
ngx_int_t ngx_http_sf_oauth_store_instance_url(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_str_t *url);
ngx_int_t ngx_http_sf_oauth_store_identity(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_http_sf_oauth_who_t *who);
void ngx_http_sf_oauth_store_identity_set(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_who_t *who);
ngx_uint_t ngx_http_sf_oauth_store_identity_known(
    ngx_http_sf_oauth_cred_t *cred);
void ngx_http_sf_oauth_store_metrics(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t *counted, ngx_uint_t api_used, ngx_uint_t api_limit,
    ngx_msec_t api_msec);
void ngx_http_sf_oauth_store_count(ngx_http_sf_oauth_cred_t *cred,
    size_t counter);

/* store_fleet: what the fleet keeps in a record */
ngx_int_t ngx_http_sf_oauth_store_fleet(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_node_t *rec, ngx_uint_t fleet_generation);
void ngx_http_sf_oauth_store_fleet_stored(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation, ngx_uint_t fleet);
ngx_uint_t ngx_http_sf_oauth_store_fleet_requested(
    ngx_http_sf_oauth_cred_t *cred, ngx_uint_t requests);
void ngx_http_sf_oauth_store_fleet_mark(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t dirty);
void ngx_http_sf_oauth_store_fleet_extend_lease(ngx_http_sf_oauth_cred_t *cred,
    ngx_msec_t deadline);
void ngx_http_sf_oauth_store_fleet_owner(ngx_http_sf_oauth_cred_t *cred,
    u_char *owner, size_t len);
ngx_uint_t ngx_http_sf_oauth_store_fleet_view(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t *generation, ngx_uint_t *dirty);
ngx_uint_t ngx_http_sf_oauth_store_fleet_key(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t mismatch);
ngx_uint_t ngx_http_sf_oauth_store_fleet_key_mismatch(
    ngx_http_sf_oauth_cred_t *cred);
ngx_uint_t ngx_http_sf_oauth_store_fleet_outage(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t outage);
void ngx_http_sf_oauth_store_fleet_retry(ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *error);
ngx_uint_t ngx_http_sf_oauth_store_fleet_unwritten(
    ngx_http_sf_oauth_cred_t *cred);
ngx_uint_t ngx_http_sf_oauth_store_fleet_primary(
    ngx_http_sf_oauth_cred_t *cred, ngx_str_t *run_id, ngx_str_t *old);
void ngx_http_sf_oauth_store_fleet_seen(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t generation);
ngx_msec_t ngx_http_sf_oauth_store_fleet_quarantine(
    ngx_http_sf_oauth_cred_t *cred, ngx_msec_t ttl);
ngx_msec_t ngx_http_sf_oauth_store_fleet_down(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t mark, ngx_uint_t clear, ngx_uint_t *logged);
ngx_uint_t ngx_http_sf_oauth_store_fleet_failovers(
    ngx_http_sf_oauth_cred_t *cred);

/* state file */
char *ngx_http_sf_oauth_state_conf(ngx_conf_t *cf,
    ngx_http_sf_oauth_zone_t *zone, ngx_str_t *state, ngx_str_t *key);
ngx_int_t ngx_http_sf_oauth_state_init_dir(ngx_cycle_t *cycle,
    ngx_http_sf_oauth_zone_t *zone);
void ngx_http_sf_oauth_state_report(ngx_cycle_t *cycle,
    ngx_http_sf_oauth_zone_t *zone);
void ngx_http_sf_oauth_state_load(ngx_http_sf_oauth_zone_t *zone,
    ngx_log_t *log);
void ngx_http_sf_oauth_state_save(ngx_http_sf_oauth_cred_t *cred);
ngx_int_t ngx_http_sf_oauth_state_same(ngx_str_t *a, ngx_str_t *b);

/* state file contents */
u_char *ngx_http_sf_oauth_codec_encode(u_char *key, ngx_str_t *context,
    ngx_http_sf_oauth_node_t *nodes, ngx_uint_t n, ngx_pool_t *pool,
    size_t *len);
ngx_int_t ngx_http_sf_oauth_codec_decode(u_char *key, ngx_str_t *context,
    u_char *data, size_t len, ngx_http_sf_oauth_node_t **recs,
    ngx_uint_t *nrec, const char **why, ngx_log_t *log);

/* client: an HTTP request, and its answer to a completion callback */
typedef struct {
    ngx_uint_t                   status;      /* 0: no answer came */
    u_char                      *body;
    size_t                       len;
    const char                  *location;    /* of a redirect, or NULL */
    const char                  *error;       /* why no answer came */
    unsigned                     timed_out:1;
    unsigned                     too_large:1;
    unsigned                     abandoned:1;
} ngx_http_sf_oauth_answer_t;

typedef void (*ngx_http_sf_oauth_done_pt)(ngx_http_sf_oauth_answer_t *answer,
    void *data);

typedef struct {
    ngx_str_t                   *url;         /* zero-terminated */
    ngx_keyval_t                *form;        /* POSTed; NULL: a GET */
    ngx_uint_t                   nform;
    ngx_str_t                   *bearer;      /* an access token, or NULL */
    ngx_msec_t                   timeout;
    ngx_str_t                   *ca_file;
    ngx_flag_t                   ssl_verify;
    /* for the log of its connections: "requesting a token from..." */
    char                        *action;
    ngx_http_sf_oauth_done_pt    done;
    void                        *data;
} ngx_http_sf_oauth_call_t;

ngx_int_t ngx_http_sf_oauth_client_init(ngx_cycle_t *cycle);
void ngx_http_sf_oauth_client_exit(ngx_cycle_t *cycle);
ngx_http_sf_oauth_transfer_t *ngx_http_sf_oauth_client_start(
    ngx_http_sf_oauth_call_t *call);

/* refresh */
ngx_int_t ngx_http_sf_oauth_refresh_start(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_lookup_t *lk);
ngx_int_t ngx_http_sf_oauth_refresh_identity(ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *org_id, ngx_str_t *user_id, ngx_str_t *token);

/*
 * The code exchange's outcome: with tok->ok the credential's lease is
 * still held, for the caller to store the tokens
 * (ngx_http_sf_oauth_refresh_connected) or release it; "status" is 502,
 * or 504 when the token endpoint did not answer in time.
 */
typedef void (*ngx_http_sf_oauth_exchanged_pt)(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_token_t *tok, ngx_uint_t status, void *data);

ngx_int_t ngx_http_sf_oauth_refresh_exchange(ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *code, ngx_str_t *redirect_uri, ngx_str_t *verifier,
    ngx_http_sf_oauth_exchanged_pt handler, void *data);
ngx_uint_t ngx_http_sf_oauth_refresh_connected(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_token_t *tok);

/* fleet: what a worker's fleet request is doing (cred->rt.fleet_state) */
#define NGX_HTTP_SF_OAUTH_FLEET_IDLE     0
#define NGX_HTTP_SF_OAUTH_FLEET_ASKING   1
#define NGX_HTTP_SF_OAUTH_FLEET_LEASED   2
#define NGX_HTTP_SF_OAUTH_FLEET_WAITING  3

/* fleet: its answers */
#define NGX_HTTP_SF_OAUTH_FLEET_NEWER    1
#define NGX_HTTP_SF_OAUTH_FLEET_LEASE    2
#define NGX_HTTP_SF_OAUTH_FLEET_HELD     3
#define NGX_HTTP_SF_OAUTH_FLEET_DOWN     4
#define NGX_HTTP_SF_OAUTH_FLEET_STORED   5
#define NGX_HTTP_SF_OAUTH_FLEET_STALE    6
#define NGX_HTTP_SF_OAUTH_FLEET_KEY      7

/* fleet: why Redis counts as down (ngx_http_sf_oauth_store_fleet_down) */
#define NGX_HTTP_SF_OAUTH_FLEET_UNREACHABLE  1
#define NGX_HTTP_SF_OAUTH_FLEET_REFUSED      2

/*
 * What the fleet says: one of the answers above; with NEWER and LEASE the
 * record in Redis (NULL if none or unusable), and the fleet generation.
 * KEY: the fleet's record is written with another key, and this node's
 * refresh token may be rotated out; no token request may be made.
 */
typedef void (*ngx_http_sf_oauth_fleet_pt)(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t answer, ngx_http_sf_oauth_node_t *rec, ngx_uint_t generation);

extern ngx_str_t  ngx_http_sf_oauth_fleet_down;
extern ngx_str_t  ngx_http_sf_oauth_fleet_key_error;

ngx_int_t ngx_http_sf_oauth_fleet_init(ngx_cycle_t *cycle);
void ngx_http_sf_oauth_fleet_exit(ngx_cycle_t *cycle);
ngx_uint_t ngx_http_sf_oauth_fleet_on(ngx_http_sf_oauth_cred_t *cred);
ngx_uint_t ngx_http_sf_oauth_fleet_connected(ngx_http_sf_oauth_cred_t *cred);
ngx_msec_t ngx_http_sf_oauth_fleet_quarantine(ngx_http_sf_oauth_cred_t *cred);
ngx_msec_t ngx_http_sf_oauth_fleet_failover_left(
    ngx_http_sf_oauth_cred_t *cred);
void ngx_http_sf_oauth_fleet_acquire(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t known, ngx_uint_t unsynced, ngx_http_sf_oauth_fleet_pt handler);
void ngx_http_sf_oauth_fleet_store(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_fleet_pt handler);
void ngx_http_sf_oauth_fleet_store_connected(ngx_http_sf_oauth_cred_t *cred,
    ngx_http_sf_oauth_fleet_pt handler);
void ngx_http_sf_oauth_fleet_release(ngx_http_sf_oauth_cred_t *cred);

/* redis_conf */
char *ngx_http_sf_oauth_redis_conf_block(ngx_conf_t *cf,
    ngx_http_sf_oauth_redis_t *rd);

ngx_int_t ngx_http_sf_oauth_redis_conf_resolver(ngx_conf_t *cf,
    ngx_http_sf_oauth_redis_t *rd);

/* primary */
void ngx_http_sf_oauth_primary_locate(ngx_http_sf_oauth_locate_t *lc);
void ngx_http_sf_oauth_primary_cancel(ngx_http_sf_oauth_locate_t *lc);
ngx_int_t ngx_http_sf_oauth_primary_watch(ngx_http_sf_oauth_redis_t *rd,
    ngx_cycle_t *cycle, ngx_http_sf_oauth_moved_pt moved);
void ngx_http_sf_oauth_primary_unwatch(ngx_http_sf_oauth_redis_t *rd);
void ngx_http_sf_oauth_primary_watched(ngx_http_sf_oauth_redis_t *rd,
    ngx_str_t *sentinel);

/* redis: what a worker's command connection is on, for the status */
typedef struct {
    ngx_str_t                    primary;     /* "ip:port"; empty: none */
    const char                  *source;      /* where primary came from */
    ngx_str_t                    sentinel;    /* the one that named it */
    ngx_str_t                    role;        /* ROLE's; empty: not known */
    ngx_str_t                    watched;     /* for +switch-master */
    ngx_msec_int_t               ok_ago;      /* last success, ms; -1 */
} ngx_http_sf_oauth_redis_view_t;

ngx_int_t ngx_http_sf_oauth_redis_init(ngx_http_sf_oauth_redis_t *rd,
    ngx_cycle_t *cycle, ngx_http_sf_oauth_reply_pt message,
    ngx_http_sf_oauth_redis_ready_pt ready, void *data);
void ngx_http_sf_oauth_redis_exit(ngx_http_sf_oauth_redis_t *rd);
ngx_uint_t ngx_http_sf_oauth_redis_ready(ngx_http_sf_oauth_redis_t *rd);
ngx_uint_t ngx_http_sf_oauth_redis_connecting(ngx_http_sf_oauth_redis_t *rd);
void ngx_http_sf_oauth_redis_run_id(ngx_http_sf_oauth_redis_t *rd,
    ngx_str_t *run_id);
ngx_int_t ngx_http_sf_oauth_redis_command(ngx_http_sf_oauth_redis_t *rd,
    ngx_uint_t argc, ngx_str_t *argv, ngx_http_sf_oauth_reply_pt handler,
    void *data, char *action);
void ngx_http_sf_oauth_redis_view(ngx_http_sf_oauth_redis_t *rd,
    ngx_http_sf_oauth_redis_view_t *v);

/* jwt */
char *ngx_http_sf_oauth_jwt_key(ngx_conf_t *cf, ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *pem);
ngx_int_t ngx_http_sf_oauth_jwt_public(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_str_t *der);
ngx_int_t ngx_http_sf_oauth_jwt_assertion(ngx_http_sf_oauth_cred_t *cred,
    ngx_pool_t *pool, ngx_str_t *jwt);
ngx_int_t ngx_http_sf_oauth_jwt_match_form(ngx_str_t *token);

/* timer */
void ngx_http_sf_oauth_timer_init(ngx_event_t *ev,
    ngx_event_handler_pt handler, ngx_log_t *log);
void ngx_http_sf_oauth_timer_post(ngx_event_t *ev);

/* send */
ngx_int_t ngx_http_sf_oauth_send(ngx_http_request_t *r, ngx_uint_t status,
    const char *type, ngx_buf_t *b);
ngx_int_t ngx_http_sf_oauth_send_bulk_error(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *code, ngx_str_t *message);

/* page: an HTML page of the console, with its safety headers */
ngx_int_t ngx_http_sf_oauth_page_send(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *title, ngx_chain_t *body,
    ngx_str_t *form_action);
u_char *ngx_http_sf_oauth_page_escape(u_char *dst, u_char *src, size_t len);
size_t ngx_http_sf_oauth_page_escape_len(u_char *src, size_t len);
ngx_int_t ngx_http_sf_oauth_page_headers(ngx_http_request_t *r,
    ngx_str_t *form_action);

/* connect: the web server flow, from the console */
char *ngx_http_sf_oauth_connect_conf(ngx_conf_t *cf);
ngx_int_t ngx_http_sf_oauth_connect_route(ngx_http_request_t *r,
    ngx_str_t *rest);
ngx_int_t ngx_http_sf_oauth_connect_form(ngx_http_request_t *r,
    ngx_str_t *name, ngx_str_t *token);
ngx_int_t ngx_http_sf_oauth_connect_button(ngx_http_request_t *r,
    ngx_http_sf_oauth_cred_t *cred, ngx_str_t *html);
ngx_int_t ngx_http_sf_oauth_connect_form_action(ngx_http_request_t *r,
    ngx_str_t *origins);

/* console */
ngx_int_t ngx_http_sf_oauth_console_handler(ngx_http_request_t *r);

/* url */
typedef struct {
    ngx_str_t                    origin;      /* scheme://host[:port] */
    ngx_str_t                    host;        /* IPv6 in brackets */
    ngx_str_t                    uri;         /* path, query, fragment */
    in_port_t                    port;
    const char                  *err;         /* ngx_parse_url()'s */
} ngx_http_sf_oauth_url_t;

ngx_int_t ngx_http_sf_oauth_url_parse(ngx_pool_t *pool, ngx_str_t *url,
    ngx_http_sf_oauth_url_t *u);

/* parse */
void ngx_http_sf_oauth_parse_response(ngx_pool_t *pool, long status,
    u_char *body, size_t len, ngx_http_sf_oauth_token_t *tok);
ngx_int_t ngx_http_sf_oauth_parse_check_token(ngx_str_t *s);
void ngx_http_sf_oauth_parse_introspect(ngx_pool_t *pool, long status,
    u_char *body, size_t len, ngx_http_sf_oauth_token_t *tok);
void ngx_http_sf_oauth_parse_redirect(ngx_pool_t *pool, long status,
    const char *location, ngx_http_sf_oauth_token_t *tok);
ngx_int_t ngx_http_sf_oauth_parse_who(ngx_pool_t *pool, long status,
    u_char *body, size_t len, ngx_http_sf_oauth_who_t *who);
void ngx_cdecl ngx_http_sf_oauth_parse_fail(ngx_pool_t *pool,
    ngx_http_sf_oauth_token_t *tok, ngx_uint_t error_class, const char *hint,
    const char *fmt, ...);

/* handler */
ngx_int_t ngx_http_sf_oauth_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_sf_oauth_handler_cred(ngx_http_request_t *r,
    ngx_http_sf_oauth_cred_t **cred, ngx_uint_t log);
ngx_int_t ngx_http_sf_oauth_handler_rewrite(ngx_http_request_t *r);
ngx_int_t ngx_http_sf_oauth_handler_content(ngx_http_request_t *r);
ngx_int_t ngx_http_sf_oauth_handler_log(ngx_http_request_t *r);
ngx_http_sf_oauth_ctx_t *ngx_http_sf_oauth_handler_ctx(ngx_http_request_t *r);
void ngx_http_sf_oauth_handler_response_header(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
ngx_int_t ngx_http_sf_oauth_handler_authorization_variable(
    ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data);
ngx_int_t ngx_http_sf_oauth_handler_request_body_init(ngx_conf_t *cf);
void ngx_http_sf_oauth_handler_grpc_trailers(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
ngx_int_t ngx_http_sf_oauth_handler_accesstoken_variable(
    ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data);

/* wait */
ngx_int_t ngx_http_sf_oauth_wait_ask_zone(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_http_sf_oauth_lookup_t *lk);
ngx_int_t ngx_http_sf_oauth_wait_follow_answer(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_int_t rc,
    ngx_http_sf_oauth_lookup_t *lk);
ngx_int_t ngx_http_sf_oauth_wait_hold(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
ngx_uint_t ngx_http_sf_oauth_wait_is_stale_replay(
    ngx_http_sf_oauth_ctx_t *ctx);
void ngx_http_sf_oauth_wait_clean_ctx(void *data);
void ngx_http_sf_oauth_wait_reconnect(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);

/* inject */
extern u_char  ngx_http_sf_oauth_inject_lowcase_key[];

ngx_int_t ngx_http_sf_oauth_inject_set_token(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
void ngx_http_sf_oauth_inject_unset_token(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
ngx_table_elt_t *ngx_http_sf_oauth_inject_find_header(ngx_list_t *list,
    ngx_str_t *name, ngx_table_elt_t *after);
ngx_table_elt_t *ngx_http_sf_oauth_inject_find_encoding(
    ngx_http_request_t *r);

/* soap */
ngx_int_t ngx_http_sf_oauth_soap_read_envelope(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);

/* fail */
ngx_int_t ngx_http_sf_oauth_fail_request(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *error, time_t retry_after);
ngx_int_t ngx_http_sf_oauth_fail_send_error(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_str_t *error, time_t retry_after);
void ngx_http_sf_oauth_fail_end_upstream(ngx_http_request_t *r);

/* envelope */
void ngx_http_sf_oauth_envelope_init(void);
void ngx_http_sf_oauth_envelope_exit(void);
ngx_uint_t ngx_http_sf_oauth_envelope_kind(ngx_http_request_t *r);
void ngx_http_sf_oauth_envelope_namespace(ngx_http_request_t *r,
    ngx_str_t *ns);
ngx_int_t ngx_http_sf_oauth_envelope_parse(ngx_pool_t *pool,
    ngx_chain_t *body, ngx_str_t *ns, ngx_http_sf_oauth_envelope_t *env,
    ngx_str_t *why);
ngx_int_t ngx_http_sf_oauth_envelope_body(ngx_pool_t *pool,
    ngx_http_sf_oauth_envelope_t *env, ngx_str_t *token, ngx_chain_t **out,
    off_t *size);

/* answer */
ngx_int_t ngx_http_sf_oauth_answer_fault(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *why);
ngx_int_t ngx_http_sf_oauth_answer_login(ngx_http_request_t *r,
    ngx_http_sf_oauth_envelope_t *env, ngx_http_sf_oauth_who_t *who,
    ngx_uint_t sandbox);

/* inflate */
ngx_http_sf_oauth_inflate_t *ngx_http_sf_oauth_inflate_start_envelope(
    ngx_http_request_t *r, ngx_chain_t *body);
ngx_int_t ngx_http_sf_oauth_inflate_envelope(ngx_http_sf_oauth_inflate_t *in,
    ngx_chain_t **out, ngx_uint_t *status, ngx_str_t *why);
ngx_int_t ngx_http_sf_oauth_inflate_response(ngx_pool_t *pool, u_char **body,
    size_t *len, ngx_uint_t *whole);

/* verdict */
ngx_int_t ngx_http_sf_oauth_verdict_candidate(ngx_uint_t kind,
    ngx_uint_t status);
ngx_int_t ngx_http_sf_oauth_verdict(ngx_uint_t kind, ngx_uint_t status,
    u_char *body, size_t len, ngx_uint_t whole);

/* bayeux */
ngx_uint_t ngx_http_sf_oauth_bayeux_request(ngx_http_request_t *r);
ngx_int_t ngx_http_sf_oauth_bayeux_verdict(ngx_pool_t *pool,
    ngx_uint_t channel, u_char *body, size_t len, ngx_uint_t whole,
    ngx_str_t *out);

/* filter */
ngx_int_t ngx_http_sf_oauth_filter_init(ngx_conf_t *cf);

/* grpc: the Pub/Sub API */
char *ngx_http_sf_oauth_grpc_conf(ngx_conf_t *cf,
    ngx_http_sf_oauth_loc_conf_t *slcf, ngx_http_core_loc_conf_t *clcf);
ngx_uint_t ngx_http_sf_oauth_grpc_unary(ngx_http_request_t *r);
ngx_int_t ngx_http_sf_oauth_grpc_read_call(ngx_http_request_t *r);
void ngx_http_sf_oauth_grpc_reuse_body(ngx_http_request_t *r);
ngx_uint_t ngx_http_sf_oauth_grpc_dead(ngx_list_t *headers);

/* status */
ngx_int_t ngx_http_sf_oauth_status_handler(ngx_http_request_t *r);
u_char *ngx_http_sf_oauth_status_json_str(u_char *p, u_char *last,
    const char *key, u_char *s, size_t len);

/* metrics */
ngx_int_t ngx_http_sf_oauth_metrics_init(ngx_cycle_t *cycle);
void ngx_http_sf_oauth_metrics_exit(ngx_cycle_t *cycle);
void ngx_http_sf_oauth_metrics_count(ngx_http_sf_oauth_cred_t *cred,
    ngx_uint_t status);
void ngx_http_sf_oauth_metrics_usage(ngx_http_sf_oauth_cred_t *cred,
    ngx_str_t *value);
ngx_int_t ngx_http_sf_oauth_metrics_handler(ngx_http_request_t *r);

/* redact */
void ngx_http_sf_oauth_redact_install(ngx_http_request_t *r,
    ngx_http_sf_oauth_cred_t *cred, ngx_uint_t generation, ngx_str_t *token);
void ngx_http_sf_oauth_redact_remember(ngx_http_sf_oauth_cred_t *cred,
    u_char *secret, size_t len);
size_t ngx_http_sf_oauth_redact(ngx_http_sf_oauth_cred_t *cred, u_char *buf,
    size_t len, size_t size);
void ngx_http_sf_oauth_redact_fingerprint(u_char *dst, u_char *data,
    size_t len);
ngx_int_t ngx_http_sf_oauth_redact_flow_init(ngx_conf_t *cf);
void ngx_http_sf_oauth_redact_flow_install(ngx_http_request_t *r);


#endif /* _NGX_HTTP_SF_OAUTH_H_INCLUDED_ */
