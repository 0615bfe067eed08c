
/*
 * The state file of a zone ("sf_oauth_zone ... state=PATH key=PATH"): the
 * refresh and access tokens of every credential, so that a full restart
 * needs no token request and a rotated refresh token is never lost.
 *
 * Format: the magic "SFOAUTH1", a 12-byte random nonce, the 16-byte GCM
 * tag, then the AES-256-GCM ciphertext of a JSON document.  The magic is
 * authenticated too.
 *
 * The file is written after every new token, by the worker that got it:
 * a temp file in the same directory, fsync, rename, mode 0600.  One worker
 * writes at a time; a change made while another writes marks the zone
 * dirty and the writer writes again.  It is read once, by the master, when
 * the zone is created.  Anything wrong with it (wrong key, tampering,
 * truncation, bad contents) is an error line, and the file is ignored as a
 * whole: the configured refresh tokens are used.
 */


#include <openssl/evp.h>
#include <openssl/rand.h>
#include <cjson/cJSON.h>

#include "ngx_http_sf_oauth.h"


#define NGX_HTTP_SF_OAUTH_MAGIC       "SFOAUTH1"
#define NGX_HTTP_SF_OAUTH_MAGIC_LEN   8
#define NGX_HTTP_SF_OAUTH_NONCE_LEN   12
#define NGX_HTTP_SF_OAUTH_TAG_LEN     16
#define NGX_HTTP_SF_OAUTH_HEADER_LEN                                         \
    (NGX_HTTP_SF_OAUTH_MAGIC_LEN + NGX_HTTP_SF_OAUTH_NONCE_LEN               \
     + NGX_HTTP_SF_OAUTH_TAG_LEN)
#define NGX_HTTP_SF_OAUTH_STATE_MAX   (4 * 1024 * 1024)


static ngx_int_t ngx_http_sf_oauth_state_write(ngx_http_sf_oauth_zone_t *zone,
    ngx_pool_t *pool, ngx_log_t *log);
static ngx_int_t ngx_http_sf_oauth_crypt(ngx_http_sf_oauth_zone_t *zone,
    ngx_uint_t encrypt, u_char *nonce, u_char *tag, u_char *in, size_t len,
    u_char *out);
static ngx_int_t ngx_http_sf_oauth_state_record(cJSON *item,
    ngx_http_sf_oauth_node_t *rec);
static ngx_int_t ngx_http_sf_oauth_json_str(cJSON *obj, const char *name,
    u_char *dst, size_t max, size_t *len, ngx_uint_t optional);


/* "key=PATH": 32 bytes, raw or as 64 hex digits; others may not read it */

char *
ngx_http_sf_oauth_state_conf(ngx_conf_t *cf, ngx_http_sf_oauth_zone_t *zone,
    ngx_str_t *state, ngx_str_t *key)
{
    u_char           buf[130], *p, *last;
    ssize_t          n;
    ngx_fd_t         fd;
    ngx_int_t        b;
    ngx_uint_t       i;
    ngx_file_info_t  fi;

    zone->state = *state;

    if (ngx_conf_full_name(cf->cycle, &zone->state, 1) != NGX_OK
        || ngx_conf_full_name(cf->cycle, key, 1) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    fd = ngx_open_file(key->data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "cannot read the key \"%V\" of sf_oauth_zone "
                           "\"%V\"", key, &zone->name);
        return NGX_CONF_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR
        || (ngx_file_access(&fi) & S_IROTH))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the key \"%V\" of sf_oauth_zone \"%V\" is "
                           "readable by everyone: \"chmod o-rwx\" it",
                           key, &zone->name);
        (void) ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    n = ngx_read_fd(fd, buf, sizeof(buf));

    (void) ngx_close_file(fd);

    p = buf;
    last = buf + (n > 0 ? n : 0);

    while (last > p && isspace(last[-1])) {
        last--;
    }

    if (last - p == 32) {
        ngx_memcpy(zone->key, p, 32);
        return NGX_CONF_OK;
    }

    if (last - p == 64) {
        for (i = 0; i < 32; i++) {
            b = ngx_hextoi(p + 2 * i, 2);
            if (b == NGX_ERROR) {
                break;
            }

            zone->key[i] = (u_char) b;
        }

        if (i == 32) {
            ngx_explicit_memzero(buf, sizeof(buf));
            return NGX_CONF_OK;
        }
    }

    ngx_explicit_memzero(buf, sizeof(buf));

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "the key \"%V\" of sf_oauth_zone \"%V\" must hold 32 "
                       "bytes, or 64 hex digits: make one with \"openssl "
                       "rand -hex 32\"", key, &zone->name);

    return NGX_CONF_ERROR;
}


/*
 * At start, in the master, as root: the state file's directory is made if
 * missing and given to the worker user, who writes the file.
 */

ngx_int_t
ngx_http_sf_oauth_state_init_dir(ngx_cycle_t *cycle,
    ngx_http_sf_oauth_zone_t *zone)
{
    u_char           *p, *dir;
    ngx_err_t         err;
    ngx_core_conf_t  *ccf;

    if (zone->state.len == 0) {
        return NGX_OK;
    }

    /* the path is absolute and zero-terminated: ngx_conf_full_name() */
    p = (u_char *) strrchr((char *) zone->state.data, '/');
    if (p == NULL || p == zone->state.data) {
        return NGX_OK;
    }

    dir = ngx_pnalloc(cycle->pool, p - zone->state.data + 1);
    if (dir == NULL) {
        return NGX_ERROR;
    }

    ngx_cpystrn(dir, zone->state.data, p - zone->state.data + 1);

    if (ngx_create_dir(dir, 0700) == NGX_FILE_ERROR) {
        err = ngx_errno;

        if (err != NGX_EEXIST) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, err,
                          ngx_create_dir_n " \"%s\" for the state of "
                          "sf_oauth_zone \"%V\" failed", dir, &zone->name);
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    if (geteuid() == 0
        && chown((char *) dir, ccf->user, ccf->group) == -1)
    {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "chown(\"%s\") for the state of sf_oauth_zone \"%V\" "
                      "failed", dir, &zone->name);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * Reads the state file into the zone's records, with the zone locked by
 * the caller.  A record counts only for a credential of this zone whose
 * configuration fingerprint it carries: a changed client_id, token_url or
 * refresh token in nginx.conf wins over the file.
 */

void
ngx_http_sf_oauth_state_load(ngx_http_sf_oauth_zone_t *zone, ngx_log_t *log)
{
    u_char                     *data, *plain;
    size_t                      len;
    ssize_t                     n;
    cJSON                      *root, *list, *item;
    ngx_fd_t                    fd;
    ngx_uint_t                  i, j, nrec, restored;
    const char                 *why;
    ngx_file_info_t             fi;
    ngx_http_sf_oauth_node_t   *rec, *node;
    ngx_http_sf_oauth_cred_t  **cred;

    data = NULL;
    plain = NULL;
    root = NULL;
    rec = NULL;
    nrec = 0;

    fd = ngx_open_file(zone->state.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        if (ngx_errno == NGX_ENOENT) {
            ngx_log_error(NGX_LOG_NOTICE, log, 0,
                          "sf_oauth_zone \"%V\": no state file \"%V\" yet",
                          &zone->name, &zone->state);
            return;
        }

        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      "sf_oauth_zone \"%V\": cannot read the state file "
                      "\"%V\"; starting from the configured refresh tokens",
                      &zone->name, &zone->state);
        return;
    }

    why = NULL;

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        why = "cannot stat it";
        goto failed;
    }

    len = (size_t) ngx_file_size(&fi);

    if (len < NGX_HTTP_SF_OAUTH_HEADER_LEN + 2) {
        why = "it is truncated";
        goto failed;
    }

    if (len > NGX_HTTP_SF_OAUTH_STATE_MAX) {
        why = "it is too large";
        goto failed;
    }

    data = ngx_alloc(len, log);
    plain = ngx_alloc(len, log);

    if (data == NULL || plain == NULL) {
        why = "out of memory";
        goto failed;
    }

    n = ngx_read_fd(fd, data, len);

    if (n != (ssize_t) len) {
        why = "it cannot be read whole";
        goto failed;
    }

    if (ngx_memcmp(data, NGX_HTTP_SF_OAUTH_MAGIC,
                   NGX_HTTP_SF_OAUTH_MAGIC_LEN) != 0)
    {
        why = "it is not an sf_oauth state file";
        goto failed;
    }

    len -= NGX_HTTP_SF_OAUTH_HEADER_LEN;

    if (ngx_http_sf_oauth_crypt(zone, 0, data + NGX_HTTP_SF_OAUTH_MAGIC_LEN,
                                data + NGX_HTTP_SF_OAUTH_MAGIC_LEN
                                     + NGX_HTTP_SF_OAUTH_NONCE_LEN,
                                data + NGX_HTTP_SF_OAUTH_HEADER_LEN, len,
                                plain)
        != NGX_OK)
    {
        why = "it does not decrypt: a wrong key, or the file was changed, "
              "truncated or damaged";
        goto failed;
    }

    root = cJSON_ParseWithLength((char *) plain, len);
    list = cJSON_GetObjectItemCaseSensitive(root, "credentials");

    if (!cJSON_IsArray(list)) {
        why = "its contents are not valid";
        goto failed;
    }

    nrec = cJSON_GetArraySize(list);

    rec = ngx_alloc(ngx_max(nrec, 1) * sizeof(ngx_http_sf_oauth_node_t), log);
    if (rec == NULL) {
        why = "out of memory";
        goto failed;
    }

    /* every record is checked before any is used: never half a file */

    i = 0;

    cJSON_ArrayForEach(item, list) {
        if (i >= nrec
            || ngx_http_sf_oauth_state_record(item, &rec[i]) != NGX_OK)
        {
            why = "a record in it is not valid";
            goto failed;
        }

        i++;
    }

    restored = 0;
    cred = zone->creds.elts;

    for (i = 0; i < nrec; i++) {
        for (j = 0; j < zone->creds.nelts; j++) {
            node = cred[j]->node;

            if (node->name_len != rec[i].name_len
                || ngx_memcmp(node->name, rec[i].name, node->name_len) != 0)
            {
                continue;
            }

            if (rec[i].conf_fp != node->conf_fp) {
                ngx_log_error(NGX_LOG_NOTICE, log, 0,
                              "sf_oauth: credential \"%V\": the configuration "
                              "changed since the state file was written: "
                              "the configured refresh token is used",
                              &cred[j]->name);
                break;
            }

            node->refresh_len = rec[i].refresh_len;
            ngx_memcpy(node->refresh, rec[i].refresh, rec[i].refresh_len);

            if (rec[i].token_len) {
                node->token_len = rec[i].token_len;
                ngx_memcpy(node->token, rec[i].token, rec[i].token_len);
                ngx_http_sf_oauth_fingerprint(node->token_fp, node->token,
                                              node->token_len);

                node->url_len = rec[i].url_len;
                ngx_memcpy(node->instance_url, rec[i].instance_url,
                           rec[i].url_len);

                node->issued_at = rec[i].issued_at;
                node->token_time = rec[i].token_time;
                node->state = NGX_HTTP_SF_OAUTH_VALID;
                node->generation++;
            }

            restored++;
            break;
        }
    }

    ngx_log_error(NGX_LOG_NOTICE, log, 0,
                  "sf_oauth_zone \"%V\": restored %ui credentials from the "
                  "state file \"%V\"", &zone->name, restored, &zone->state);

    goto done;

failed:

    ngx_log_error(NGX_LOG_ERR, log, 0,
                  "sf_oauth_zone \"%V\": the state file \"%V\" is ignored: "
                  "%s; starting from the configured refresh tokens",
                  &zone->name, &zone->state, why);

done:

    (void) ngx_close_file(fd);

    if (root) {
        cJSON_Delete(root);
    }

    if (plain) {
        ngx_explicit_memzero(plain, ngx_file_size(&fi));
        ngx_free(plain);
    }

    if (data) {
        ngx_free(data);
    }

    if (rec) {
        ngx_explicit_memzero(rec, ngx_max(nrec, 1)
                                  * sizeof(ngx_http_sf_oauth_node_t));
        ngx_free(rec);
    }
}


static ngx_int_t
ngx_http_sf_oauth_state_record(cJSON *item, ngx_http_sf_oauth_node_t *rec)
{
    cJSON      *fp, *num;
    ngx_str_t   s;
    ngx_int_t   n;
    ngx_uint_t  i;

    ngx_memzero(rec, sizeof(ngx_http_sf_oauth_node_t));

    if (!cJSON_IsObject(item)
        || ngx_http_sf_oauth_json_str(item, "name", rec->name,
                                      NGX_HTTP_SF_OAUTH_NAME_MAX,
                                      &rec->name_len, 0)
           != NGX_OK
        || ngx_http_sf_oauth_json_str(item, "refresh_token", rec->refresh,
                                      NGX_HTTP_SF_OAUTH_REFRESH_MAX,
                                      &rec->refresh_len, 0)
           != NGX_OK
        || ngx_http_sf_oauth_json_str(item, "access_token", rec->token,
                                      NGX_HTTP_SF_OAUTH_TOKEN_MAX,
                                      &rec->token_len, 1)
           != NGX_OK
        || ngx_http_sf_oauth_json_str(item, "instance_url", rec->instance_url,
                                      NGX_HTTP_SF_OAUTH_URL_MAX,
                                      &rec->url_len, 1)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    fp = cJSON_GetObjectItemCaseSensitive(item, "conf_fp");

    if (!cJSON_IsString(fp) || ngx_strlen(fp->valuestring) != 16) {
        return NGX_ERROR;
    }

    for (i = 0; i < 8; i++) {
        n = ngx_hextoi((u_char *) fp->valuestring + 2 * i, 2);
        if (n == NGX_ERROR) {
            return NGX_ERROR;
        }

        ((u_char *) &rec->conf_fp)[i] = (u_char) n;
    }

    num = cJSON_GetObjectItemCaseSensitive(item, "issued_at");
    rec->issued_at = cJSON_IsNumber(num) && num->valuedouble > 0
                     ? (uint64_t) num->valuedouble : 0;

    num = cJSON_GetObjectItemCaseSensitive(item, "token_time");
    rec->token_time = cJSON_IsNumber(num) && num->valuedouble > 0
                      ? (time_t) num->valuedouble : 0;

    /* a token goes into a header: the same rules as from Salesforce */

    s.data = rec->token;
    s.len = rec->token_len;

    if (s.len && (rec->url_len == 0
                  || ngx_http_sf_oauth_check_token(&s) != NGX_OK))
    {
        return NGX_ERROR;
    }

    s.data = rec->refresh;
    s.len = rec->refresh_len;

    return ngx_http_sf_oauth_check_token(&s);
}


static ngx_int_t
ngx_http_sf_oauth_json_str(cJSON *obj, const char *name, u_char *dst,
    size_t max, size_t *len, ngx_uint_t optional)
{
    cJSON  *item;
    size_t  n;

    item = cJSON_GetObjectItemCaseSensitive(obj, name);

    if (item == NULL && optional) {
        *len = 0;
        return NGX_OK;
    }

    if (!cJSON_IsString(item) || item->valuestring == NULL) {
        return NGX_ERROR;
    }

    n = ngx_strlen(item->valuestring);

    if ((n == 0 && !optional) || n > max) {
        return NGX_ERROR;
    }

    ngx_memcpy(dst, item->valuestring, n);
    *len = n;

    return NGX_OK;
}


/*
 * After a new token: the whole zone goes to the state file.  If another
 * worker is writing, it is told to write once more instead.
 */

void
ngx_http_sf_oauth_state_save(ngx_http_sf_oauth_cred_t *cred)
{
    ngx_pool_t                *pool;
    ngx_slab_pool_t           *shpool;
    ngx_http_sf_oauth_sh_t    *sh;
    ngx_http_sf_oauth_zone_t  *zone;

    zone = cred->shm_zone->data;

    if (zone->state.len == 0) {
        return;
    }

    sh = zone->sh;
    shpool = zone->shpool;

    ngx_shmtx_lock(&shpool->mutex);

    if (sh->writer && sh->writer != ngx_pid
        && !(kill(sh->writer, 0) == -1 && ngx_errno == NGX_ESRCH))
    {
        sh->dirty = 1;
        ngx_shmtx_unlock(&shpool->mutex);
        return;
    }

    sh->writer = ngx_pid;

    ngx_shmtx_unlock(&shpool->mutex);

    for ( ;; ) {
        pool = ngx_create_pool(4096, ngx_cycle->log);

        if (pool) {
            (void) ngx_http_sf_oauth_state_write(zone, pool, ngx_cycle->log);
            ngx_destroy_pool(pool);
        }

        ngx_shmtx_lock(&shpool->mutex);

        if (!sh->dirty || pool == NULL) {
            sh->writer = 0;
            ngx_shmtx_unlock(&shpool->mutex);
            return;
        }

        sh->dirty = 0;

        ngx_shmtx_unlock(&shpool->mutex);
    }
}


static ngx_int_t
ngx_http_sf_oauth_state_write(ngx_http_sf_oauth_zone_t *zone,
    ngx_pool_t *pool, ngx_log_t *log)
{
    u_char                    *out, *p, hex[17];
    char                      *json;
    size_t                     len;
    cJSON                     *root, *list, *item;
    ngx_fd_t                   fd;
    ngx_str_t                  tmp;
    ngx_uint_t                 i, n;
    ngx_queue_t               *q;
    ngx_http_sf_oauth_node_t  *nodes, *node;

    /* a copy of every record, taken under the lock */

    ngx_shmtx_lock(&zone->shpool->mutex);

    n = 0;

    for (q = ngx_queue_head(&zone->sh->nodes);
         q != ngx_queue_sentinel(&zone->sh->nodes);
         q = ngx_queue_next(q))
    {
        n++;
    }

    nodes = ngx_palloc(pool, ngx_max(n, 1) * sizeof(ngx_http_sf_oauth_node_t));

    if (nodes == NULL) {
        ngx_shmtx_unlock(&zone->shpool->mutex);
        return NGX_ERROR;
    }

    i = 0;

    for (q = ngx_queue_head(&zone->sh->nodes);
         q != ngx_queue_sentinel(&zone->sh->nodes);
         q = ngx_queue_next(q))
    {
        node = ngx_queue_data(q, ngx_http_sf_oauth_node_t, queue);
        ngx_memcpy(&nodes[i++], node, sizeof(ngx_http_sf_oauth_node_t));
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);

    root = cJSON_CreateObject();
    list = cJSON_AddArrayToObject(root, "credentials");

    if (list == NULL) {
        goto failed;
    }

    for (i = 0; i < n; i++) {
        node = &nodes[i];

        item = cJSON_CreateObject();
        if (item == NULL) {
            goto failed;
        }

        cJSON_AddItemToArray(list, item);

        node->name[ngx_min(node->name_len, NGX_HTTP_SF_OAUTH_NAME_MAX - 1)]
            = '\0';
        ngx_hex_dump(hex, (u_char *) &node->conf_fp, 8);
        hex[16] = '\0';

        /* the records' buffers have room for the terminating zero */

        if (cJSON_AddStringToObject(item, "name", (char *) node->name) == NULL
            || cJSON_AddStringToObject(item, "conf_fp", (char *) hex) == NULL)
        {
            goto failed;
        }

        if (node->refresh_len < NGX_HTTP_SF_OAUTH_REFRESH_MAX) {
            node->refresh[node->refresh_len] = '\0';

            if (cJSON_AddStringToObject(item, "refresh_token",
                                        (char *) node->refresh)
                == NULL)
            {
                goto failed;
            }
        }

        if (node->state == NGX_HTTP_SF_OAUTH_VALID
            && node->token_len < NGX_HTTP_SF_OAUTH_TOKEN_MAX
            && node->url_len < NGX_HTTP_SF_OAUTH_URL_MAX)
        {
            node->token[node->token_len] = '\0';
            node->instance_url[node->url_len] = '\0';

            if (cJSON_AddStringToObject(item, "access_token",
                                        (char *) node->token) == NULL
                || cJSON_AddStringToObject(item, "instance_url",
                                           (char *) node->instance_url)
                   == NULL
                || cJSON_AddNumberToObject(item, "issued_at",
                                           (double) node->issued_at) == NULL
                || cJSON_AddNumberToObject(item, "token_time",
                                           (double) node->token_time) == NULL)
            {
                goto failed;
            }
        }
    }

    json = cJSON_PrintUnformatted(root);

    cJSON_Delete(root);
    root = NULL;

    ngx_explicit_memzero(nodes, n * sizeof(ngx_http_sf_oauth_node_t));

    if (json == NULL) {
        goto failed;
    }

    len = ngx_strlen(json);

    out = ngx_pnalloc(pool, NGX_HTTP_SF_OAUTH_HEADER_LEN + len);
    if (out == NULL) {
        ngx_explicit_memzero(json, len);
        cJSON_free(json);
        return NGX_ERROR;
    }

    p = ngx_cpymem(out, NGX_HTTP_SF_OAUTH_MAGIC, NGX_HTTP_SF_OAUTH_MAGIC_LEN);

    if (RAND_bytes(p, NGX_HTTP_SF_OAUTH_NONCE_LEN) != 1
        || ngx_http_sf_oauth_crypt(zone, 1, p, p + NGX_HTTP_SF_OAUTH_NONCE_LEN,
                                   (u_char *) json, len,
                                   out + NGX_HTTP_SF_OAUTH_HEADER_LEN)
           != NGX_OK)
    {
        ngx_explicit_memzero(json, len);
        cJSON_free(json);
        ngx_log_error(NGX_LOG_ALERT, log, 0,
                      "sf_oauth_zone \"%V\": cannot encrypt the state",
                      &zone->name);
        return NGX_ERROR;
    }

    ngx_explicit_memzero(json, len);
    cJSON_free(json);

    len += NGX_HTTP_SF_OAUTH_HEADER_LEN;

    /* temp file, fsync, rename: the file is always whole */

    tmp.len = zone->state.len + sizeof(".tmp.") - 1 + NGX_INT64_LEN;
    tmp.data = ngx_pnalloc(pool, tmp.len + 1);
    if (tmp.data == NULL) {
        return NGX_ERROR;
    }

    tmp.len = ngx_sprintf(tmp.data, "%V.tmp.%P%Z", &zone->state, ngx_pid)
              - tmp.data - 1;

    fd = ngx_open_file(tmp.data, NGX_FILE_WRONLY, NGX_FILE_TRUNCATE, 0600);

    if (fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      "sf_oauth_zone \"%V\": cannot write the state file: "
                      "open(\"%V\") failed; the directory must be writable "
                      "by nginx's worker user", &zone->name, &tmp);
        return NGX_ERROR;
    }

    if (ngx_write_fd(fd, out, len) != (ssize_t) len || fsync(fd) == -1) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      "sf_oauth_zone \"%V\": cannot write the state file "
                      "\"%V\"", &zone->name, &tmp);
        (void) ngx_close_file(fd);
        (void) ngx_delete_file(tmp.data);
        return NGX_ERROR;
    }

    (void) ngx_close_file(fd);

    if (ngx_rename_file(tmp.data, zone->state.data) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      "sf_oauth_zone \"%V\": cannot write the state file: "
                      "rename(\"%V\", \"%V\") failed",
                      &zone->name, &tmp, &zone->state);
        (void) ngx_delete_file(tmp.data);
        return NGX_ERROR;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                   "sf_oauth_zone \"%V\": state file written", &zone->name);

    return NGX_OK;

failed:

    if (root) {
        cJSON_Delete(root);
    }

    ngx_explicit_memzero(nodes, n * sizeof(ngx_http_sf_oauth_node_t));

    ngx_log_error(NGX_LOG_ALERT, log, 0,
                  "sf_oauth_zone \"%V\": cannot build the state",
                  &zone->name);

    return NGX_ERROR;
}


/* AES-256-GCM of a whole buffer; the magic is authenticated data */

static ngx_int_t
ngx_http_sf_oauth_crypt(ngx_http_sf_oauth_zone_t *zone, ngx_uint_t encrypt,
    u_char *nonce, u_char *tag, u_char *in, size_t len, u_char *out)
{
    int              n, rc;
    EVP_CIPHER_CTX  *ctx;

    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    rc = EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL,
                           encrypt ? 1 : 0) == 1
         && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN,
                                NGX_HTTP_SF_OAUTH_NONCE_LEN, NULL) == 1
         && EVP_CipherInit_ex(ctx, NULL, NULL, zone->key, nonce,
                              encrypt ? 1 : 0) == 1
         && EVP_CipherUpdate(ctx, NULL, &n,
                             (u_char *) NGX_HTTP_SF_OAUTH_MAGIC,
                             NGX_HTTP_SF_OAUTH_MAGIC_LEN) == 1
         && EVP_CipherUpdate(ctx, out, &n, in, (int) len) == 1;

    if (rc && !encrypt) {
        rc = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG,
                                 NGX_HTTP_SF_OAUTH_TAG_LEN, tag) == 1;
    }

    if (rc) {
        rc = EVP_CipherFinal_ex(ctx, out + n, &n) == 1;
    }

    if (rc && encrypt) {
        rc = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG,
                                 NGX_HTTP_SF_OAUTH_TAG_LEN, tag) == 1;
    }

    EVP_CIPHER_CTX_free(ctx);

    return rc ? NGX_OK : NGX_ERROR;
}
