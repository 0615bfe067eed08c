
/*
 * What the configuration makes: an sf_oauth_redis block, an sf_oauth_zone,
 * an sf_oauth_credential, the main and location configurations.  They are
 * read-only once the configuration is loaded, but for the part of a
 * credential and of a Redis block that each worker keeps for itself, which
 * is marked as such.
 *
 * Included by ngx_http_sf_oauth.h, after ngx_http_sf_oauth_record.h;
 * never on its own.
 */


#ifndef _NGX_HTTP_SF_OAUTH_CONF_H_INCLUDED_
#define _NGX_HTTP_SF_OAUTH_CONF_H_INCLUDED_


typedef struct ngx_http_sf_oauth_zone_s  ngx_http_sf_oauth_zone_t;
typedef struct ngx_http_sf_oauth_redis_s  ngx_http_sf_oauth_redis_t;
typedef struct ngx_http_sf_oauth_redis_conn_s  ngx_http_sf_oauth_redis_conn_t;
typedef struct ngx_http_sf_oauth_primary_s  ngx_http_sf_oauth_primary_t;
typedef struct ngx_http_sf_oauth_locate_s  ngx_http_sf_oauth_locate_t;

/* a Redis reply (a redisReply), or NULL when the connection failed first */
typedef void (*ngx_http_sf_oauth_reply_pt)(void *reply, void *data);
typedef void (*ngx_http_sf_oauth_redis_ready_pt)(
    ngx_http_sf_oauth_redis_t *rd, ngx_uint_t subscriber, void *data);

/* where the primary is: NGX_OK (lc's address), or NGX_ERROR (lc->why) */
typedef void (*ngx_http_sf_oauth_located_pt)(ngx_http_sf_oauth_locate_t *lc,
    ngx_int_t rc);

/* the sentinels say the primary moved to "ip:port" */
typedef void (*ngx_http_sf_oauth_moved_pt)(ngx_http_sf_oauth_redis_t *rd,
    ngx_str_t *addr);

/* a host:port of an sf_oauth_redis block: its server, or a sentinel */
typedef struct {
    ngx_str_t                    text;        /* as written */
    ngx_str_t                    host;        /* zero-terminated */
    in_port_t                    port;
    /* an IP literal or a unix socket: no name to resolve */
    ngx_uint_t                   is_ip;
    /* resolved when the configuration is loaded (no resolver, or an IP) */
    ngx_addr_t                   addr;
    ngx_uint_t                   resolved;
} ngx_http_sf_oauth_redis_host_t;

/*
 * A connection's question "where is the primary?", per worker: the
 * answer (an address, where it came from), and what primary.c keeps while
 * it finds out.
 */
struct ngx_http_sf_oauth_locate_s {
    ngx_http_sf_oauth_redis_t     *rd;
    ngx_http_sf_oauth_located_pt   handler;
    void                          *data;

    ngx_sockaddr_t                 sockaddr;
    socklen_t                      socklen;
    ngx_str_t                      name;        /* "ip:port" */
    u_char                         name_buf[NGX_SOCKADDR_STRLEN];
    /* for TLS: the host name or IP the certificate must be for */
    ngx_str_t                      host;        /* zero-terminated */
    u_char                         host_buf[NGX_SOCKADDR_STRLEN + 1];
    ngx_uint_t                     host_is_ip;
    in_port_t                      port;
    /* "configuration", "resolver" or "sentinel" */
    const char                    *source;
    /* the sentinel that named it, as configured; empty for the others */
    ngx_str_t                      sentinel;
    const char                    *why;
    u_char                         why_buf[256];

    /* in flight: a name being resolved, a sentinel being asked */
    ngx_resolver_ctx_t            *resolving;
    void                          *asking;
    ngx_uint_t                     next;
    ngx_uint_t                     tried;
};

/* what to do when a refresh is due while Redis is unreachable */
#define NGX_HTTP_SF_OAUTH_DOWN_LOCAL     0
#define NGX_HTTP_SF_OAUTH_DOWN_FAIL      1

/* an sf_oauth_redis block */
struct ngx_http_sf_oauth_redis_s {
    ngx_str_t                    name;
    ngx_str_t                    server;
    ngx_str_t                    user;
    ngx_str_t                    password;
    ngx_str_t                    password_file;
    ngx_int_t                    database;
    ngx_str_t                    prefix;
    ngx_str_t                    channel;
    ngx_flag_t                   tls;
    ngx_str_t                    ca_file;
    ngx_flag_t                   ssl_verify;
    ngx_flag_t                   world_readable;
    ngx_msec_t                   timeout;
    ngx_uint_t                   down;

    /*
     * the server as host and port; or the sentinels (an array of
     * ngx_http_sf_oauth_redis_host_t), and the master's name
     */
    ngx_http_sf_oauth_redis_host_t   primary;
    ngx_array_t                 *sentinels;
    ngx_str_t                    sentinel_master;
    ngx_str_t                    sentinel_password;
    ngx_str_t                    sentinel_password_file;

    /* http's resolver, when it has servers: names resolved at run time */
    ngx_resolver_t              *resolver;
    ngx_msec_t                   resolver_timeout;
    ngx_msec_t                   failover_wait;
#if (NGX_SSL)
    ngx_ssl_t                   *ssl;
#else
    void                        *ssl;
#endif

    u_char                      *file;
    ngx_uint_t                   line;

    /* per worker: the command connection and the subscriber */
    ngx_http_sf_oauth_redis_conn_t  *cmd;
    ngx_http_sf_oauth_redis_conn_t  *sub;

    /* per worker: the sentinels' subscription */
    ngx_http_sf_oauth_primary_t     *watch;

    /* per worker: an outage has been logged as uncoordinated */
    ngx_uint_t                   outage_logged;
};

struct ngx_http_sf_oauth_zone_s {
    ngx_http_sf_oauth_sh_t      *sh;
    ngx_slab_pool_t             *shpool;
    ngx_str_t                    name;
    ngx_array_t                  creds;       /* ngx_http_sf_oauth_cred_t * */

    /* on a reload that resized the zone: the old one, until the commit */
    ngx_http_sf_oauth_zone_t    *resized;

    /* the state file, if any, and its AES-256 key, and its fingerprint */
    ngx_str_t                    state;
    u_char                       key[32];
    u_char                       key_fp[NGX_HTTP_SF_OAUTH_FP_LEN];

    /* the state file configured, a full path, also when it is not used */
    ngx_str_t                    state_path;

    /* why a configured key cannot be used */
    ngx_str_t                    key_path;
    const char                  *key_error;
    ngx_err_t                    key_errno;

    /* the fleet: redis=NAME, its block, and whether the key allows it */
    ngx_str_t                    redis_name;
    ngx_http_sf_oauth_redis_t   *redis;
};


typedef struct ngx_http_sf_oauth_transfer_s  ngx_http_sf_oauth_transfer_t;


typedef struct ngx_http_sf_oauth_cred_s  ngx_http_sf_oauth_cred_t;
typedef struct ngx_http_sf_oauth_inflate_s  ngx_http_sf_oauth_inflate_t;

/*
 * The part of a credential that changes at run time, cred->rt, which
 * each worker process has a copy of: the record found for it in the zone
 * (and whether this configuration made it, or must hand a token over to
 * the workers of an older one), its waiters and token request, the
 * identity request, the fleet's progress in this worker, the metrics not
 * yet flushed, the secrets the log redaction knows.  The rest of a
 * credential is configuration, read-only once loaded.
 */
typedef struct {
    ngx_http_sf_oauth_node_t    *node;

    /*
     * What every request touches comes first, on the cache line of the
     * node's pointer, not 2.4 KB further on past the fleet's buffers
     * (with a thousand credentials, each request another one, each line
     * of a credential is a miss): the metrics of this worker not yet in
     * the zone (requests by status, the last API usage Salesforce
     * reported, and when they were flushed)
     */
    ngx_uint_t                   counted[NGX_HTTP_SF_OAUTH_STATUSES];
    ngx_uint_t                   api_used;
    ngx_uint_t                   api_limit;
    ngx_msec_t                   api_msec;
    ngx_uint_t                   unflushed;
    ngx_msec_t                   flushed;
    ngx_msec_t                   transfer_start;

    /* the generation of the last token the log redaction learnt */
    ngx_uint_t                   seen_generation;

    /* the record was made by this configuration, not found in the zone */
    ngx_uint_t                   fresh;
    /*
     * this configuration's reload changed the credential: its workers get
     * the token for requests that the workers before it hold
     */
    ngx_uint_t                   handover;
    /*
     * the commit copied into this configuration's record the lease of a
     * worker before it: its workers look for its outcome in the zone
     * "sf_oauth_carry" until it is there or the lease is over
     */
    ngx_uint_t                   carried;
    /*
     * the commit moved the record here from another zone: its workers
     * answer the wishes of the workers before it for a token
     */
    ngx_uint_t                   relay;
    ngx_queue_t                  waiters;
    ngx_http_sf_oauth_transfer_t *transfer;

    /* the token generation a JWT-format token was last logged for */
    ngx_uint_t                   jwt_generation;

    /* the identity service's request, and the user it read */
    ngx_http_sf_oauth_transfer_t *identity;
    ngx_msec_t                   identity_tried;
    size_t                       identity_user_len;
    u_char                       identity_user[NGX_HTTP_SF_OAUTH_ID_MAX];

    /* the token generation that this worker's introspection asks about */
    ngx_uint_t                   introspected;

    /*
     * The fleet, in this worker: the lease in Redis is this owner's, taken
     * at fleet generation "fleet_base"; the refresh token to send if Redis
     * has none newer; the timers of the lease's renewal and of the wait
     * for another node's refresh
     */
    ngx_uint_t                   fleet_state;
    ngx_uint_t                   fleet_alone;
    ngx_uint_t                   fleet_base;
    ngx_uint_t                   fleet_known;
    ngx_uint_t                   fleet_distrust;
    ngx_uint_t                   fleet_skip;
    /* a periodic or announced read is in flight; another was asked */
    unsigned                     fleet_syncing:1;
    unsigned                     fleet_sync_again:1;
    /* the periodic read was refused by Redis, and that was said */
    unsigned                     fleet_read_refused:1;
    ngx_msec_t                   fleet_deadline;
    ngx_event_t                  fleet_timer;
    void                        *fleet_op;
    size_t                       fleet_owner_len;
    u_char                       fleet_owner[NGX_HTTP_SF_OAUTH_OWNER_MAX];
    size_t                       fleet_secret_len;
    u_char                       fleet_secret[NGX_HTTP_SF_OAUTH_REFRESH_MAX];

    /* recent secrets of this credential, for the log redaction */
    ngx_uint_t                   seen_next;
    size_t                       seen_len[NGX_HTTP_SF_OAUTH_SEEN];
    u_char                       seen[NGX_HTTP_SF_OAUTH_SEEN]
                                     [NGX_HTTP_SF_OAUTH_TOKEN_MAX];
} ngx_http_sf_oauth_cred_rt_t;


struct ngx_http_sf_oauth_cred_s {
    ngx_str_t                    name;

    ngx_str_t                    zone_name;
    ngx_shm_zone_t              *shm_zone;
    ngx_str_t                    token_url;
    ngx_str_t                    token_origin;  /* scheme://host[:port] */
    ngx_str_t                    token_host;
    ngx_str_t                    introspect_url;
    ngx_str_t                    client_id;
    ngx_str_t                    client_secret;
    ngx_str_t                    client_secret_file;
    ngx_str_t                    refresh_token;
    ngx_str_t                    refresh_token_file;
    /* the web server flow's callback URL, as registered in the app */
    ngx_str_t                    connect_url;
    ngx_str_t                    ca_file;
    ngx_uint_t                   grant;
    ngx_str_t                    username;
    ngx_str_t                    private_key;
    ngx_str_t                    audience;
    /* the private key of the JWT bearer grant: an EVP_PKEY */
    void                        *pkey;
    ngx_msec_t                   timeout;
    ngx_msec_t                   backoff_min;
    ngx_msec_t                   backoff_max;
    ngx_msec_t                   hold;
    ngx_msec_t                   lifetime;
    ngx_msec_t                   refresh_ahead;
    ngx_flag_t                   introspect;
    ngx_flag_t                   ssl_verify;
    ngx_flag_t                   world_readable;

    /*
     * What makes a token (conf_fp), and what proves the app to Salesforce:
     * the client secret or the private key (secret_fp); for the refresh
     * token grant, what makes its refresh token (rt_fp, 0 for the other
     * grants).  See ngx_http_sf_oauth_fingerprint_conf.
     */
    uint64_t                     conf_fp;
    uint64_t                     rt_fp;
    uint64_t                     secret_fp;

    u_char                      *file;
    ngx_uint_t                   line;

    /*
     * A refresh_token credential configured without a refresh token is
     * "not connected" until its record has one (see
     * ngx_http_sf_oauth_store_not_connected): the error its requests get
     */
    ngx_str_t                    not_connected;

    /* the next credential whose name differs only in case */
    ngx_http_sf_oauth_cred_t    *same_name;

    /* a location answers SOAP login() with this credential's identity */
    ngx_uint_t                   soap_login;

    /* what each worker process keeps of the credential at run time */
    ngx_http_sf_oauth_cred_rt_t  rt;
};


typedef struct {
    ngx_array_t                  creds;       /* ngx_http_sf_oauth_cred_t * */
    ngx_array_t                  zones;       /* ngx_shm_zone_t * */

    /* the credentials by name, for "sf_oauth $variable" */
    ngx_hash_t                   names;

    ngx_array_t                  redis;       /* ngx_http_sf_oauth_redis_t * */

    /* the web server flow's zone, made with the first sf_oauth_console */
    ngx_shm_zone_t              *connect_zone;

    /* the outcomes that reloads carry to new zones, with the first zone */
    ngx_shm_zone_t              *carry_zone;

    /* a location has sf_oauth_console */
    ngx_uint_t                   console;
} ngx_http_sf_oauth_main_conf_t;


typedef struct {
    ngx_http_sf_oauth_cred_t    *cred;

    /* "sf_oauth $variable": the credential is named per request */
    ngx_http_complex_value_t    *value;

    /* the location's own content handler (the proxy's), wrapped */
    ngx_http_handler_pt          handler;

    /* SOAP login() and logout() are answered by the module */
    ngx_flag_t                   soap_login;

    /*
     * the location's content handler is grpc_pass's: the Pub/Sub API,
     * see ngx_http_sf_oauth_grpc.c
     */
    ngx_uint_t                   grpc;

    /* sf_oauth_soap_inflate_limit: a gzip envelope's inflated size */
    off_t                        inflate_max;
    ngx_uint_t                   inflate_ratio;

    ngx_str_t                    name;
    u_char                      *file;
    ngx_uint_t                   line;
} ngx_http_sf_oauth_loc_conf_t;


#endif /* _NGX_HTTP_SF_OAUTH_CONF_H_INCLUDED_ */
