
/*
 * The state file of a zone ("sf_oauth_zone ... state=PATH key=PATH"): the
 * refresh and access tokens of every credential, so that a full restart
 * needs no token request and a rotated refresh token is never lost.  The
 * contents and their encryption are in ngx_http_sf_oauth_codec.c; this
 * file does the configuration and the I/O.
 *
 * The file is written after every new token, by the worker that got it:
 * a temp file in the same directory, created anew (never through a link,
 * never one that was there), mode 0600, fsync, rename.  One worker
 * writes at a time; a change made while another writes marks the zone
 * dirty and the writer writes again.  It is read once, by the master, when
 * the zone is created.  Anything wrong with it (wrong key, tampering,
 * truncation, bad contents) is an error line, and the file is ignored as a
 * whole: the configured refresh tokens are used.
 */


#include "ngx_http_sf_oauth.h"


#define NGX_HTTP_SF_OAUTH_STATE_MAX   (4 * 1024 * 1024)


static ngx_int_t ngx_http_sf_oauth_state_write(ngx_http_sf_oauth_zone_t *zone,
    ngx_pool_t *pool, ngx_log_t *log);
static ngx_fd_t ngx_http_sf_oauth_state_create(ngx_http_sf_oauth_zone_t *zone,
    ngx_str_t *tmp, ngx_log_t *log);
static size_t ngx_http_sf_oauth_state_clean(u_char *dst, ngx_str_t *path);


/*
 * "key=PATH": 32 bytes, raw or as 64 hex digits; others may not read it.
 * A key that is missing or unusable does not stop nginx: the zone then
 * runs without its state file, which init_module reports in the error log
 * (ngx_http_sf_oauth_state_report).
 */

char *
ngx_http_sf_oauth_state_conf(ngx_conf_t *cf, ngx_http_sf_oauth_zone_t *zone,
    ngx_str_t *state, ngx_str_t *key)
{
    u_char      buf[131], *p, *last;
    ngx_int_t   b;
    ngx_str_t   s;
    ngx_uint_t  i;

    zone->state = *state;

    if ((zone->state.len
         && ngx_conf_full_name(cf->cycle, &zone->state, 1) != NGX_OK)
        || ngx_conf_full_name(cf->cycle, key, 1) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    zone->state_path = zone->state;
    zone->key_path = *key;

    switch (ngx_http_sf_oauth_block_read_file(key, 0, buf, sizeof(buf) - 1,
                                              &s, &zone->key_errno))
    {
    case NGX_OK:
        break;

    case NGX_HTTP_SF_OAUTH_FILE_UNREADABLE:
        zone->key_error = "cannot be read";
        goto unusable;

    case NGX_HTTP_SF_OAUTH_FILE_WORLD:
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the key \"%V\" of sf_oauth_zone \"%V\" is "
                           "readable by everyone: \"chmod o-rwx\" it",
                           key, &zone->name);
        return NGX_CONF_ERROR;

    default:
        /* not a regular file, or larger than any key: unusable contents */
        s.data = buf;
        s.len = 0;
    }

    p = s.data;
    last = s.data + s.len;

    if (last - p == 32) {
        ngx_memcpy(zone->key, p, 32);
        goto done;
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
            goto done;
        }
    }

    ngx_explicit_memzero(buf, sizeof(buf));

    zone->key_error = "must hold 32 bytes, or 64 hex digits: make one with "
                      "\"openssl rand -hex 32\"";

    goto unusable;

done:

    ngx_explicit_memzero(buf, sizeof(buf));

    /* what a fleet's nodes compare, and the logs name: never the key */
    ngx_http_sf_oauth_redact_fingerprint(zone->key_fp, zone->key, 32);

    return NGX_CONF_OK;

unusable:

    ngx_conf_log_error(NGX_LOG_ERR, cf, zone->key_errno,
                       "the key \"%V\" of sf_oauth_zone \"%V\" %s; %s",
                       key, &zone->name, zone->key_error,
                       zone->redis_name.len
                       ? "the zone runs without its state file and out of "
                         "the fleet"
                       : "the state file is not used");

    zone->state.len = 0;

    return NGX_CONF_OK;
}


/* at start, in the error log: a zone whose state file cannot be used */

void
ngx_http_sf_oauth_state_report(ngx_cycle_t *cycle,
    ngx_http_sf_oauth_zone_t *zone)
{
    if (zone->key_error) {
        ngx_log_error(NGX_LOG_ERR, cycle->log, zone->key_errno,
                      "the key \"%V\" of sf_oauth_zone \"%V\" %s; the "
                      "state file is not used: tokens start from the "
                      "configured refresh tokens and rotated ones are not "
                      "kept across a restart", &zone->key_path, &zone->name,
                      zone->key_error);
    }
}


/*
 * Whether two state paths (full paths, as ngx_conf_full_name() gives them)
 * name one file, so that nginx -t refuses two zones writing it: the same
 * path once empty and "." parts are dropped; or, where they exist, the
 * same file (hard or symbolic links), or the same name in the same
 * directory (a link to the directory).  ".." is not resolved by hand: a
 * link before it would lead elsewhere.
 */

ngx_int_t
ngx_http_sf_oauth_state_same(ngx_str_t *a, ngx_str_t *b)
{
    u_char           *sa, *sb, pa[NGX_MAX_PATH], pb[NGX_MAX_PATH];
    size_t            la, lb;
    ngx_file_info_t   fa, fb;

    if (a->len >= NGX_MAX_PATH || b->len >= NGX_MAX_PATH) {
        return a->len == b->len && ngx_strncmp(a->data, b->data, a->len) == 0;
    }

    la = ngx_http_sf_oauth_state_clean(pa, a);
    lb = ngx_http_sf_oauth_state_clean(pb, b);

    if (la == lb && ngx_strncmp(pa, pb, la) == 0) {
        return 1;
    }

    if (ngx_file_info(pa, &fa) != NGX_FILE_ERROR
        && ngx_file_info(pb, &fb) != NGX_FILE_ERROR)
    {
        return fa.st_dev == fb.st_dev && fa.st_ino == fb.st_ino;
    }

    /* a file not written yet: its directory and its name */

    sa = (u_char *) strrchr((char *) pa, '/');
    sb = (u_char *) strrchr((char *) pb, '/');

    if (sa == pa || sb == pb || ngx_strcmp(sa, sb) != 0) {
        /* in the root directory: the same path, compared above */
        return 0;
    }

    *sa = '\0';
    *sb = '\0';

    return ngx_file_info(pa, &fa) != NGX_FILE_ERROR
           && ngx_file_info(pb, &fb) != NGX_FILE_ERROR
           && fa.st_dev == fb.st_dev && fa.st_ino == fb.st_ino;
}


/* a path without empty and "." parts, zero-terminated, into dst */

static size_t
ngx_http_sf_oauth_state_clean(u_char *dst, ngx_str_t *path)
{
    u_char  *p, *last, *part, *d;

    d = dst;
    p = path->data;
    last = path->data + path->len;

    while (p < last) {
        while (p < last && *p == '/') {
            p++;
        }

        part = p;

        while (p < last && *p != '/') {
            p++;
        }

        if (p == part || (p - part == 1 && *part == '.')) {
            continue;
        }

        *d++ = '/';
        d = ngx_cpymem(d, part, p - part);
    }

    if (d == dst) {
        *d++ = '/';
    }

    *d = '\0';

    return d - dst;
}


/*
 * At start and on reload, in the master, as root: the state file's
 * directory is made if missing and given to the worker user, who writes
 * the file.  A directory that cannot be made (its parent is missing, say)
 * does not stop nginx: it is an error line, and the zone runs without its
 * state file.
 */

ngx_int_t
ngx_http_sf_oauth_state_init_dir(ngx_cycle_t *cycle,
    ngx_http_sf_oauth_zone_t *zone)
{
    u_char           *p, *dir;
    ngx_err_t         err;
    const char       *what;
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

        if (err == NGX_EEXIST) {
            return NGX_OK;
        }

        what = ngx_create_dir_n;
        goto failed;
    }

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    if (geteuid() == 0
        && chown((char *) dir, ccf->user, ccf->group) == -1)
    {
        err = ngx_errno;
        what = "chown()";
        goto failed;
    }

    return NGX_OK;

failed:

    ngx_log_error(NGX_LOG_ERR, cycle->log, err,
                  "sf_oauth_zone \"%V\": cannot create the directory \"%s\" "
                  "of the state file \"%V\" (%s failed): create it, "
                  "writable by nginx's worker user, and reload; the zone "
                  "runs without its state file: rotated refresh tokens are "
                  "not kept across a restart",
                  &zone->name, dir, &zone->state, what);

    zone->state.len = 0;

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
    u_char                     *data;
    size_t                      len;
    ssize_t                     n;
    ngx_fd_t                    fd;
    ngx_uint_t                  i, j, nrec, restored, same;
    const char                 *why;
    ngx_file_info_t             fi;
    ngx_http_sf_oauth_node_t   *rec, *node;
    ngx_http_sf_oauth_cred_t  **cred;

    /* O_NONBLOCK: the open() of a FIFO would wait for a writer */
    fd = ngx_open_file(zone->state.data, NGX_FILE_RDONLY|NGX_FILE_NONBLOCK,
                       NGX_FILE_OPEN, 0);

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

    data = NULL;
    len = 0;
    why = "it cannot be read";

    if (ngx_fd_info(fd, &fi) != NGX_FILE_ERROR) {
        len = (size_t) ngx_file_size(&fi);

        if (!ngx_is_file(&fi)) {
            why = "it is not a regular file";

        } else if (len > NGX_HTTP_SF_OAUTH_STATE_MAX) {
            why = "it is too large";

        } else {
            data = ngx_alloc(len + 1, log);
        }
    }

    n = data ? ngx_read_fd(fd, data, len) : -1;

    (void) ngx_close_file(fd);

    if (n != (ssize_t) len
        || ngx_http_sf_oauth_codec_decode(zone->key, NULL, data, len, &rec,
                                          &nrec, &why, log)
           != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "sf_oauth_zone \"%V\": the state file \"%V\" is "
                      "ignored: %s; starting from the configured refresh "
                      "tokens", &zone->name, &zone->state, why);

        if (data) {
            ngx_free(data);
        }

        return;
    }

    ngx_free(data);

    restored = 0;
    cred = zone->creds.elts;

    for (i = 0; i < nrec; i++) {
        for (j = 0; j < zone->creds.nelts; j++) {
            node = cred[j]->rt.node;

            if (node->name_len != rec[i].name_len
                || ngx_memcmp(node->name, rec[i].name, node->name_len) != 0)
            {
                continue;
            }

            /* a record whose token_url alone changed is kept */
            same = ngx_http_sf_oauth_store_same(cred[j], &rec[i]);

            if (same
                && rec[i].refresh_len == 0
                && cred[j]->not_connected.len)
            {
                /* it was not connected when the file was written */
                break;
            }

            if (same == 0
                || (rec[i].refresh_len == 0
                    && cred[j]->grant == NGX_HTTP_SF_OAUTH_GRANT_REFRESH))
            {
                ngx_log_error(NGX_LOG_NOTICE, log, 0,
                              "sf_oauth: credential \"%V\": the configuration "
                              "changed since the state file was written: "
                              "the configured refresh token is used",
                              &cred[j]->name);
                break;
            }

            if (same == NGX_HTTP_SF_OAUTH_SAME_RT) {
                ngx_log_error(NGX_LOG_NOTICE, log, 0,
                              "sf_oauth: credential \"%V\" changed its "
                              "token_url since the state file was written: "
                              "its refresh token is kept", &cred[j]->name);
            }

            node->refresh_len = rec[i].refresh_len;
            ngx_memcpy(node->refresh, rec[i].refresh, rec[i].refresh_len);

            if (rec[i].token_len) {
                /* its age is unknown: a refresh ahead waits a lifetime */
                ngx_http_sf_oauth_store_set_token(node, NULL, &rec[i]);
            }

            restored++;
            break;
        }
    }

    ngx_explicit_memzero(rec, ngx_max(nrec, 1)
                              * sizeof(ngx_http_sf_oauth_node_t));
    ngx_free(rec);

    ngx_log_error(NGX_LOG_NOTICE, log, 0,
                  "sf_oauth_zone \"%V\": restored %ui credentials from the "
                  "state file \"%V\"", &zone->name, restored, &zone->state);
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
    u_char                    *out;
    size_t                     len;
    ngx_fd_t                   fd;
    ngx_str_t                  tmp;
    ngx_uint_t                 i, n;
    const char                *what;
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

        if (node->moved) {
            /* a reload moved it to another zone, whose file has it */
            continue;
        }

        ngx_memcpy(&nodes[i++], node, sizeof(ngx_http_sf_oauth_node_t));
    }

    n = i;

    ngx_shmtx_unlock(&zone->shpool->mutex);

    out = ngx_http_sf_oauth_codec_encode(zone->key, NULL, nodes, n, pool, &len);

    ngx_explicit_memzero(nodes, n * sizeof(ngx_http_sf_oauth_node_t));

    if (out == NULL) {
        ngx_log_error(NGX_LOG_ALERT, log, 0,
                      "sf_oauth_zone \"%V\": cannot encode the state",
                      &zone->name);
        return NGX_ERROR;
    }

    /* temp file, fsync, rename: the file is always whole */

    tmp.len = zone->state.len + sizeof(".tmp.") - 1 + NGX_INT64_LEN;
    tmp.data = ngx_pnalloc(pool, tmp.len + 1);
    if (tmp.data == NULL) {
        return NGX_ERROR;
    }

    tmp.len = ngx_sprintf(tmp.data, "%V.tmp.%P%Z", &zone->state, ngx_pid)
              - tmp.data - 1;

    fd = ngx_http_sf_oauth_state_create(zone, &tmp, log);

    if (fd == NGX_INVALID_FILE) {
        return NGX_ERROR;
    }

    what = NULL;

    if (fchmod(fd, 0600) == -1) {
        what = "fchmod()";

    } else if (ngx_write_fd(fd, out, len) != (ssize_t) len) {
        what = ngx_write_fd_n;

    } else if (fsync(fd) == -1) {
        what = "fsync()";
    }

    if (what) {
        ngx_log_error(NGX_LOG_CRIT, log, ngx_errno,
                      "sf_oauth_zone \"%V\": cannot write the state file: "
                      "%s \"%V\" failed; check the file system of the "
                      "state file (full, read-only)",
                      &zone->name, what, &tmp);
        (void) ngx_close_file(fd);
        (void) ngx_delete_file(tmp.data);
        return NGX_ERROR;
    }

    (void) ngx_close_file(fd);

    if (ngx_rename_file(tmp.data, zone->state.data) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_CRIT, log, ngx_errno,
                      "sf_oauth_zone \"%V\": cannot write the state file: "
                      "rename(\"%V\", \"%V\") failed; the directory must be "
                      "writable by nginx's worker user, and the state file "
                      "must not be a directory",
                      &zone->name, &tmp, &zone->state);
        (void) ngx_delete_file(tmp.data);
        return NGX_ERROR;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                   "sf_oauth_zone \"%V\": state file written", &zone->name);

    return NGX_OK;
}


/*
 * The temporary file, PATH.tmp.<pid>: always a new file of this process,
 * created with O_EXCL and O_NOFOLLOW, so that no file or link already at
 * that path is ever written through.  Something there is removed (unlink()
 * removes a link, not its target) and the create is tried once more: a
 * leftover of a worker of the same pid that died while writing, quietly;
 * a link, another user's file or a file with other names, with a warning,
 * for someone put it there.  A directory is left alone: no write.
 */

static ngx_fd_t
ngx_http_sf_oauth_state_create(ngx_http_sf_oauth_zone_t *zone, ngx_str_t *tmp,
    ngx_log_t *log)
{
    ngx_fd_t          fd;
    ngx_err_t         err;
    ngx_uint_t        tries;
    const char       *what;
    ngx_file_info_t   fi;

    for (tries = 0; /* void */ ; tries++) {

        fd = ngx_open_file(tmp->data, NGX_FILE_WRONLY,
                           O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, 0600);

        if (fd != NGX_INVALID_FILE) {
            return fd;
        }

        err = ngx_errno;

        if (err != NGX_EEXIST || tries == 1) {
            ngx_log_error(NGX_LOG_CRIT, log, err,
                          "sf_oauth_zone \"%V\": cannot write the state "
                          "file: open(\"%V\") failed; %s", &zone->name, tmp,
                          err == NGX_EEXIST
                          ? "something creates it again as soon as it is "
                            "removed: remove it, and check who can write to "
                            "the directory"
                          : "the directory must be writable by nginx's "
                            "worker user");
            return NGX_INVALID_FILE;
        }

        if (ngx_link_info(tmp->data, &fi) == NGX_FILE_ERROR) {
            /* gone meanwhile */
            continue;
        }

        if (ngx_is_dir(&fi)) {
            ngx_log_error(NGX_LOG_CRIT, log, 0,
                          "sf_oauth_zone \"%V\": cannot write the state "
                          "file: its temporary file \"%V\" is a directory; "
                          "remove it, and check who can write to the "
                          "directory", &zone->name, tmp);
            return NGX_INVALID_FILE;
        }

        if (ngx_is_link(&fi)) {
            what = "a symbolic link";

        } else if (!ngx_is_file(&fi)) {
            what = "not a regular file";

        } else if (fi.st_uid != geteuid()) {
            what = "another user's file";

        } else if (fi.st_nlink > 1) {
            what = "a file with other names";

        } else {
            what = NULL;
        }

        if (what) {
            ngx_log_error(NGX_LOG_WARN, log, 0,
                          "sf_oauth_zone \"%V\": the state file's temporary "
                          "file \"%V\" was there already, %s: it is removed, "
                          "neither followed nor written; check who can "
                          "write to the directory", &zone->name, tmp, what);

        } else {
            ngx_log_error(NGX_LOG_NOTICE, log, 0,
                          "sf_oauth_zone \"%V\": removed the temporary file "
                          "\"%V\" that a worker process left when it "
                          "stopped while writing the state file",
                          &zone->name, tmp);
        }

        if (ngx_delete_file(tmp->data) == NGX_FILE_ERROR
            && ngx_errno != NGX_ENOENT)
        {
            ngx_log_error(NGX_LOG_CRIT, log, ngx_errno,
                          "sf_oauth_zone \"%V\": cannot write the state "
                          "file: " ngx_delete_file_n " \"%V\" failed; remove "
                          "it, and check who can write to the directory",
                          &zone->name, tmp);
            return NGX_INVALID_FILE;
        }
    }
}
