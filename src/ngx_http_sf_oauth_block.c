
/*
 * What the module's blocks in nginx.conf (sf_oauth_credential,
 * sf_oauth_redis) share: the dispatcher of their parameters, and where
 * their secrets come from (inline, an environment variable, a file read
 * with the permission check).
 *
 * A block's parameters are an ngx_command_t table run by the dispatcher,
 * so they parse like any nginx directive, with nginx's own slot functions.
 */


#include "ngx_http_sf_oauth.h"


typedef struct {
    const char                  *kind;        /* "sf_oauth_credential" */
    ngx_str_t                   *name;
    ngx_command_t               *commands;
    void                        *conf;
} ngx_http_sf_oauth_block_t;


static char *ngx_http_sf_oauth_block_param(ngx_conf_t *cf,
    ngx_command_t *dummy, void *conf);


/*
 * Parses the block "kind name { ... }" that begins at cf: each parameter
 * by its entry in "commands", into "conf".
 */

char *
ngx_http_sf_oauth_block_parse(ngx_conf_t *cf, const char *kind,
    ngx_str_t *name, ngx_command_t *commands, void *conf)
{
    char                       *rv;
    ngx_conf_t                  save;
    ngx_http_sf_oauth_block_t   block;

    block.kind = kind;
    block.name = name;
    block.commands = commands;
    block.conf = conf;

    save = *cf;
    cf->handler = ngx_http_sf_oauth_block_param;
    cf->handler_conf = (char *) &block;

    rv = ngx_conf_parse(cf, NULL);

    *cf = save;

    return rv;
}


static char *
ngx_http_sf_oauth_block_param(ngx_conf_t *cf, ngx_command_t *dummy,
    void *conf)
{
    ngx_http_sf_oauth_block_t  *block = conf;

    char           *rv;
    ngx_str_t      *value;
    ngx_uint_t      argc;
    ngx_command_t  *cmd;

    value = cf->args->elts;

    for (cmd = block->commands; cmd->name.len; cmd++) {
        if (cmd->name.len == value[0].len
            && ngx_strcmp(cmd->name.data, value[0].data) == 0)
        {
            break;
        }
    }

    if (cmd->name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "unknown directive \"%V\" in %s \"%V\"",
                           &value[0], block->kind, block->name);
        return NGX_CONF_ERROR;
    }

    argc = (cmd->type & NGX_CONF_TAKE2) ? 3 : 2;

    /* a list: one or more */
    if ((cmd->type & NGX_CONF_1MORE) && cf->args->nelts > argc) {
        argc = cf->args->nelts;
    }

    if (cf->args->nelts != argc) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid number of arguments in \"%V\" of "
                           "%s \"%V\": it takes %ui",
                           &value[0], block->kind, block->name, argc - 1);
        return NGX_CONF_ERROR;
    }

    if (value[1].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "empty \"%V\" in %s \"%V\"",
                           &value[0], block->kind, block->name);
        return NGX_CONF_ERROR;
    }

    rv = cmd->set(cf, cmd, block->conf);

    if (rv == NGX_CONF_OK || rv == NGX_CONF_ERROR) {
        return rv;
    }

    if (ngx_strcmp(rv, "invalid value") == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" of \"%V\" in %s \"%V\"",
                           &value[1], &value[0], block->kind, block->name);

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" %s in %s \"%V\"",
                           &value[0], rv, block->kind, block->name);
    }

    return NGX_CONF_ERROR;
}


/*
 * A secret is set once: inline, as "env:NAME" (from the master's
 * environment; list NAME with nginx's "env" directive so that it stays on
 * reload), or from a file.
 */

char *
ngx_http_sf_oauth_block_secret(ngx_conf_t *cf,
    ngx_http_sf_oauth_owner_t *owner, const char *name, const char *file,
    ngx_str_t *value, ngx_str_t *path)
{
    u_char  *env;

    if (value->len && path->len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%s \"%V\" has both \"%s\" and "
                           "\"%s\": set a secret once", owner->kind,
                           owner->name, name, file);
        return NGX_CONF_ERROR;
    }

    if (path->len) {
        return ngx_http_sf_oauth_block_read_secret(cf, owner, file, path,
                                                   value);
    }

    if (value->len > 4 && ngx_strncmp(value->data, "env:", 4) == 0) {
        env = (u_char *) getenv((char *) value->data + 4);

        if (env == NULL || *env == '\0') {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%s\" of %s \"%V\" is \"%V\", but that "
                               "environment variable is not set or empty",
                               name, owner->kind, owner->name, value);
            return NGX_CONF_ERROR;
        }

        value->data = env;
        value->len = ngx_strlen(env);
    }

    return NGX_CONF_OK;
}


/*
 * A secret from a file, for the blocks: the reader's refusals are fatal
 * here, with the name of the parameter and of the block.  Surrounding
 * white space, such as a final newline, is not part of the secret.
 */

char *
ngx_http_sf_oauth_block_read_secret(ngx_conf_t *cf,
    ngx_http_sf_oauth_owner_t *owner, const char *name, ngx_str_t *path,
    ngx_str_t *value)
{
    u_char     *p, *last;
    ngx_err_t   err;
    ngx_str_t   s;

    if (ngx_conf_full_name(cf->cycle, path, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    p = ngx_pnalloc(cf->pool, NGX_HTTP_SF_OAUTH_SECRET_MAX + 1);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    switch (ngx_http_sf_oauth_block_read_file(path, owner->world_readable, p,
                                              NGX_HTTP_SF_OAUTH_SECRET_MAX,
                                              &s, &err))
    {
    case NGX_OK:
        break;

    case NGX_HTTP_SF_OAUTH_FILE_UNREADABLE:
        ngx_conf_log_error(NGX_LOG_EMERG, cf, err,
                           "cannot read %s \"%V\" of %s \"%V\"",
                           name, path, owner->kind, owner->name);
        return NGX_CONF_ERROR;

    case NGX_HTTP_SF_OAUTH_FILE_NOT_FILE:
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%s \"%V\" of %s \"%V\" is not a regular file",
                           name, path, owner->kind, owner->name);
        return NGX_CONF_ERROR;

    case NGX_HTTP_SF_OAUTH_FILE_WORLD:
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%s \"%V\" of %s \"%V\" is "
                           "readable by everyone: \"chmod o-rwx\" it, or "
                           "accept the risk with \"allow_world_readable on\"",
                           name, path, owner->kind, owner->name);
        return NGX_CONF_ERROR;

    default: /* NGX_HTTP_SF_OAUTH_FILE_LARGE */
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%s \"%V\" of %s \"%V\" is larger than %d bytes",
                           name, path, owner->kind, owner->name,
                           NGX_HTTP_SF_OAUTH_SECRET_MAX);
        return NGX_CONF_ERROR;
    }

    p = s.data;
    last = s.data + s.len;

    while (p < last && isspace(*p)) {
        p++;
    }

    if (p == last) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%s \"%V\" of %s \"%V\" is empty",
                           name, path, owner->kind, owner->name);
        return NGX_CONF_ERROR;
    }

    value->data = p;
    value->len = last - p;

    return NGX_CONF_OK;
}


/*
 * The one reader of the secret files: the blocks' (client_secret_file,
 * refresh_token_file, private_key, password_file) and the zone's key=.
 * It reads at configuration time, as root in the master: the worker user
 * needs no access to the file.  It refuses a file that is not a regular
 * file (it is opened with O_NONBLOCK, so that a FIFO cannot block the
 * master), one that others may read, unless world_readable, and one
 * larger than "size" bytes; "buf" has room for size + 1.  The contents
 * go to *value without their trailing white space, such as a final
 * newline, and end with a NUL.  Returns NGX_OK or
 * what is wrong, NGX_HTTP_SF_OAUTH_FILE_* (with *err when it cannot be
 * read); the caller tells the operator, in its words.
 */

ngx_int_t
ngx_http_sf_oauth_block_read_file(ngx_str_t *path, ngx_flag_t world_readable,
    u_char *buf, size_t size, ngx_str_t *value, ngx_err_t *err)
{
    u_char           *last;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_int_t         rc;
    ngx_file_info_t   fi;

    *err = 0;

    /* O_NONBLOCK: the open() of a FIFO would wait for a writer */
    fd = ngx_open_file(path->data, NGX_FILE_RDONLY|NGX_FILE_NONBLOCK,
                       NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        *err = ngx_errno;
        return NGX_HTTP_SF_OAUTH_FILE_UNREADABLE;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        rc = NGX_HTTP_SF_OAUTH_FILE_NOT_FILE;
        goto done;
    }

    if (!ngx_is_file(&fi)) {
        rc = NGX_HTTP_SF_OAUTH_FILE_NOT_FILE;
        goto done;
    }

    if ((ngx_file_access(&fi) & S_IROTH) && !world_readable) {
        rc = NGX_HTTP_SF_OAUTH_FILE_WORLD;
        goto done;
    }

    n = ngx_read_fd(fd, buf, size + 1);

    if (n == -1) {
        *err = ngx_errno;
        rc = NGX_HTTP_SF_OAUTH_FILE_UNREADABLE;
        goto done;
    }

    if ((size_t) n > size) {
        rc = NGX_HTTP_SF_OAUTH_FILE_LARGE;
        goto done;
    }

    last = buf + n;

    while (last > buf && isspace(last[-1])) {
        last--;
    }

    *last = '\0';

    value->data = buf;
    value->len = last - buf;

    rc = NGX_OK;

done:

    (void) ngx_close_file(fd);

    return rc;
}
