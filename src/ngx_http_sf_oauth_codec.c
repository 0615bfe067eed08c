
/*
 * The state file's contents, without any I/O: records to an encrypted
 * buffer and back.
 *
 * Format: the magic "SFOAUTH1", a 12-byte random nonce, the 16-byte GCM
 * tag, then the AES-256-GCM ciphertext of a JSON document:
 *
 *   {"credentials":[{"name":..., "conf_fp":"<16 hex>", "refresh_token":...,
 *                    "access_token":..., "instance_url":...,
 *                    "issued_at":..., "token_time":..., "token_ms":...},
 *                   ...]}
 *
 * ("token_ms", the wall clock's ms when the token was got, is newer than
 * the format: a record without it tells the second, "token_time".
 * "rt_fp", the fingerprint of a refresh_token credential's refresh token
 * without its token_url, is newer too: a record without it is judged by
 * conf_fp alone, and versions before it ignore it.)
 *
 * The magic is authenticated too, and so is the caller's context, if any:
 * a fleet record in Redis is bound to its zone, credential and fleet
 * generation, so that it cannot be moved to another key or replayed at a
 * later generation.  Decoding checks every record before any is handed
 * back: a buffer is used whole or not at all.
 */


#include "ngx_http_sf_oauth.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <cjson/cJSON.h>


#define NGX_HTTP_SF_OAUTH_MAGIC       "SFOAUTH1"
#define NGX_HTTP_SF_OAUTH_MAGIC_LEN   8
#define NGX_HTTP_SF_OAUTH_NONCE_LEN   12
#define NGX_HTTP_SF_OAUTH_TAG_LEN     16
#define NGX_HTTP_SF_OAUTH_HEADER_LEN                                         \
    (NGX_HTTP_SF_OAUTH_MAGIC_LEN + NGX_HTTP_SF_OAUTH_NONCE_LEN               \
     + NGX_HTTP_SF_OAUTH_TAG_LEN)


static ngx_int_t ngx_http_sf_oauth_crypt(u_char *key, ngx_str_t *context,
    ngx_uint_t encrypt, u_char *nonce, u_char *tag, u_char *in, size_t len,
    u_char *out);
static ngx_int_t ngx_http_sf_oauth_add_record(cJSON *list,
    ngx_http_sf_oauth_node_t *node);
static ngx_int_t ngx_http_sf_oauth_add_str(cJSON *item, const char *name,
    u_char *data, size_t len);
static ngx_int_t ngx_http_sf_oauth_record(cJSON *item,
    ngx_http_sf_oauth_node_t *rec);
static ngx_int_t ngx_http_sf_oauth_json_str(cJSON *obj, const char *name,
    u_char *dst, size_t max, size_t *len, ngx_uint_t optional);
static ngx_int_t ngx_http_sf_oauth_json_fp(cJSON *obj, const char *name,
    uint64_t *fp, ngx_uint_t optional);


/*
 * The records to the file's bytes, allocated from the pool.  The JSON in
 * clear is wiped before it is freed.
 */

u_char *
ngx_http_sf_oauth_codec_encode(u_char *key, ngx_str_t *context,
    ngx_http_sf_oauth_node_t *nodes, ngx_uint_t n, ngx_pool_t *pool,
    size_t *len)
{
    u_char      *out, *p;
    char        *json;
    size_t       size;
    cJSON       *root, *list;
    ngx_uint_t   i;

    root = cJSON_CreateObject();
    list = cJSON_AddArrayToObject(root, "credentials");

    if (list == NULL) {
        cJSON_Delete(root);
        return NULL;
    }

    for (i = 0; i < n; i++) {
        if (ngx_http_sf_oauth_add_record(list, &nodes[i]) != NGX_OK) {
            cJSON_Delete(root);
            return NULL;
        }
    }

    json = cJSON_PrintUnformatted(root);

    cJSON_Delete(root);

    if (json == NULL) {
        return NULL;
    }

    size = ngx_strlen(json);

    out = ngx_pnalloc(pool, NGX_HTTP_SF_OAUTH_HEADER_LEN + size);

    if (out != NULL) {
        p = ngx_cpymem(out, NGX_HTTP_SF_OAUTH_MAGIC,
                       NGX_HTTP_SF_OAUTH_MAGIC_LEN);

        if (RAND_bytes(p, NGX_HTTP_SF_OAUTH_NONCE_LEN) != 1
            || ngx_http_sf_oauth_crypt(key, context, 1, p,
                                       p + NGX_HTTP_SF_OAUTH_NONCE_LEN,
                                       (u_char *) json, size,
                                       out + NGX_HTTP_SF_OAUTH_HEADER_LEN)
               != NGX_OK)
        {
            out = NULL;
        }
    }

    ngx_explicit_memzero(json, size);
    cJSON_free(json);

    *len = NGX_HTTP_SF_OAUTH_HEADER_LEN + size;

    return out;
}


static ngx_int_t
ngx_http_sf_oauth_add_record(cJSON *list, ngx_http_sf_oauth_node_t *node)
{
    u_char  hex[16];
    cJSON  *item;

    item = cJSON_CreateObject();
    if (item == NULL) {
        return NGX_ERROR;
    }

    cJSON_AddItemToArray(list, item);

    /* the limits of the configuration and of the token parser, inclusive */

    if (node->name_len > NGX_HTTP_SF_OAUTH_NAME_MAX
        || node->refresh_len > NGX_HTTP_SF_OAUTH_REFRESH_MAX)
    {
        return NGX_ERROR;
    }

    ngx_hex_dump(hex, (u_char *) &node->conf_fp, sizeof(uint64_t));

    if (ngx_http_sf_oauth_add_str(item, "name", node->name, node->name_len)
        != NGX_OK
        || ngx_http_sf_oauth_add_str(item, "conf_fp", hex, sizeof(hex))
           != NGX_OK
        || ngx_http_sf_oauth_add_str(item, "refresh_token", node->refresh,
                                     node->refresh_len)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (node->rt_fp) {
        ngx_hex_dump(hex, (u_char *) &node->rt_fp, sizeof(uint64_t));

        if (ngx_http_sf_oauth_add_str(item, "rt_fp", hex, sizeof(hex))
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (node->state != NGX_HTTP_SF_OAUTH_VALID) {
        return NGX_OK;
    }

    if (node->token_len > NGX_HTTP_SF_OAUTH_TOKEN_MAX
        || node->url_len > NGX_HTTP_SF_OAUTH_URL_MAX)
    {
        return NGX_ERROR;
    }

    if (ngx_http_sf_oauth_add_str(item, "access_token", node->token,
                                  node->token_len)
        != NGX_OK
        || ngx_http_sf_oauth_add_str(item, "instance_url", node->instance_url,
                                     node->url_len)
           != NGX_OK
        || ngx_http_sf_oauth_add_str(item, "org_id", node->org_id,
                                     node->org_id_len)
           != NGX_OK
        || ngx_http_sf_oauth_add_str(item, "user_id", node->user_id,
                                     node->user_id_len)
           != NGX_OK
        || cJSON_AddNumberToObject(item, "issued_at",
                                   (double) node->issued_at) == NULL
        || cJSON_AddNumberToObject(item, "token_time",
                                   (double) node->token_time) == NULL
        || cJSON_AddNumberToObject(item, "token_ms",
                                   (double) node->token_ms) == NULL)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * A string member from a record's buffer, which holds no terminating zero:
 * a value may fill it.  The copy made to terminate it is wiped.
 */

static ngx_int_t
ngx_http_sf_oauth_add_str(cJSON *item, const char *name, u_char *data,
    size_t len)
{
    u_char  *p, buf[NGX_HTTP_SF_OAUTH_TOKEN_MAX + 1];
    cJSON   *s;

    /* the access token is the largest value a record holds */

    if (len > NGX_HTTP_SF_OAUTH_TOKEN_MAX) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(buf, data, len);
    *p = '\0';

    s = cJSON_AddStringToObject(item, name, (char *) buf);

    ngx_explicit_memzero(buf, len);

    return s ? NGX_OK : NGX_ERROR;
}


/*
 * The file's bytes to records, in *recs (ngx_alloc()ed: the caller wipes
 * and frees it).  On failure *why says what is wrong with the file.
 */

ngx_int_t
ngx_http_sf_oauth_codec_decode(u_char *key, ngx_str_t *context,
    u_char *data, size_t len, ngx_http_sf_oauth_node_t **recs,
    ngx_uint_t *nrec, const char **why, ngx_log_t *log)
{
    u_char                    *plain;
    cJSON                     *root, *list, *item;
    ngx_int_t                  rc;
    ngx_uint_t                 i, n;
    ngx_http_sf_oauth_node_t  *rec;

    *recs = NULL;
    *nrec = 0;

    if (len < NGX_HTTP_SF_OAUTH_MAGIC_LEN
        || ngx_memcmp(data, NGX_HTTP_SF_OAUTH_MAGIC,
                      NGX_HTTP_SF_OAUTH_MAGIC_LEN) != 0)
    {
        *why = "it is not an sf_oauth state file";
        return NGX_ERROR;
    }

    if (len < NGX_HTTP_SF_OAUTH_HEADER_LEN + 2) {
        *why = "it is truncated";
        return NGX_ERROR;
    }

    len -= NGX_HTTP_SF_OAUTH_HEADER_LEN;

    plain = ngx_alloc(len, log);
    if (plain == NULL) {
        *why = "out of memory";
        return NGX_ERROR;
    }

    if (ngx_http_sf_oauth_crypt(key, context, 0,
                                data + NGX_HTTP_SF_OAUTH_MAGIC_LEN,
                                data + NGX_HTTP_SF_OAUTH_MAGIC_LEN
                                     + NGX_HTTP_SF_OAUTH_NONCE_LEN,
                                data + NGX_HTTP_SF_OAUTH_HEADER_LEN, len,
                                plain)
        != NGX_OK)
    {
        ngx_explicit_memzero(plain, len);
        ngx_free(plain);
        *why = "it does not decrypt: a wrong key, or the file was changed, "
               "truncated or damaged";
        return NGX_ERROR;
    }

    root = cJSON_ParseWithLength((char *) plain, len);

    ngx_explicit_memzero(plain, len);
    ngx_free(plain);

    list = cJSON_GetObjectItemCaseSensitive(root, "credentials");

    if (!cJSON_IsArray(list)) {
        cJSON_Delete(root);
        *why = "its contents are not valid";
        return NGX_ERROR;
    }

    n = cJSON_GetArraySize(list);

    rec = ngx_alloc(ngx_max(n, 1) * sizeof(ngx_http_sf_oauth_node_t), log);
    if (rec == NULL) {
        cJSON_Delete(root);
        *why = "out of memory";
        return NGX_ERROR;
    }

    rc = NGX_OK;
    i = 0;

    cJSON_ArrayForEach(item, list) {
        if (i >= n || ngx_http_sf_oauth_record(item, &rec[i]) != NGX_OK) {
            rc = NGX_ERROR;
            break;
        }

        i++;
    }

    cJSON_Delete(root);

    if (rc != NGX_OK) {
        ngx_explicit_memzero(rec, ngx_max(n, 1)
                                  * sizeof(ngx_http_sf_oauth_node_t));
        ngx_free(rec);
        *why = "a record in it is not valid";
        return NGX_ERROR;
    }

    *recs = rec;
    *nrec = n;

    return NGX_OK;
}


static ngx_int_t
ngx_http_sf_oauth_record(cJSON *item, ngx_http_sf_oauth_node_t *rec)
{
    cJSON      *num;
    ngx_str_t   s;

    ngx_memzero(rec, sizeof(ngx_http_sf_oauth_node_t));

    if (!cJSON_IsObject(item)
        || ngx_http_sf_oauth_json_str(item, "name", rec->name,
                                      NGX_HTTP_SF_OAUTH_NAME_MAX,
                                      &rec->name_len, 0)
           != NGX_OK
        || ngx_http_sf_oauth_json_str(item, "refresh_token", rec->refresh,
                                      NGX_HTTP_SF_OAUTH_REFRESH_MAX,
                                      &rec->refresh_len, 1)
           != NGX_OK
        || ngx_http_sf_oauth_json_str(item, "access_token", rec->token,
                                      NGX_HTTP_SF_OAUTH_TOKEN_MAX,
                                      &rec->token_len, 1)
           != NGX_OK
        || ngx_http_sf_oauth_json_str(item, "instance_url", rec->instance_url,
                                      NGX_HTTP_SF_OAUTH_URL_MAX,
                                      &rec->url_len, 1)
           != NGX_OK
        || ngx_http_sf_oauth_json_str(item, "org_id", rec->org_id,
                                      NGX_HTTP_SF_OAUTH_ID_MAX,
                                      &rec->org_id_len, 1)
           != NGX_OK
        || ngx_http_sf_oauth_json_str(item, "user_id", rec->user_id,
                                      NGX_HTTP_SF_OAUTH_ID_MAX,
                                      &rec->user_id_len, 1)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_sf_oauth_json_fp(item, "conf_fp", &rec->conf_fp, 0)
        != NGX_OK
        || ngx_http_sf_oauth_json_fp(item, "rt_fp", &rec->rt_fp, 1)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    /*
     * Numbers out of range are 0.  They are informational, but for
     * token_ms: see ngx_http_sf_oauth_wait_is_stale_replay()
     */

    num = cJSON_GetObjectItemCaseSensitive(item, "issued_at");
    rec->issued_at = (cJSON_IsNumber(num) && num->valuedouble > 0
                      && num->valuedouble < 1e18)
                     ? (uint64_t) num->valuedouble : 0;

    num = cJSON_GetObjectItemCaseSensitive(item, "token_time");
    rec->token_time = (cJSON_IsNumber(num) && num->valuedouble > 0
                       && num->valuedouble < 1e12)
                      ? (time_t) num->valuedouble : 0;

    /* without it, the token was got by the end of its second at the latest */
    num = cJSON_GetObjectItemCaseSensitive(item, "token_ms");
    if (cJSON_IsNumber(num) && num->valuedouble > 0
        && num->valuedouble < 1e15)
    {
        rec->token_ms = (uint64_t) num->valuedouble;

    } else if (rec->token_time) {
        rec->token_ms = (uint64_t) rec->token_time * 1000 + 999;
    }

    /* a token goes into a header: the same rules as from Salesforce */

    s.data = rec->token;
    s.len = rec->token_len;

    if (s.len && (rec->url_len == 0
                  || ngx_http_sf_oauth_parse_check_token(&s) != NGX_OK))
    {
        return NGX_ERROR;
    }

    /* the JWT bearer and client credentials grants have none */

    if (rec->refresh_len == 0) {
        return NGX_OK;
    }

    s.data = rec->refresh;
    s.len = rec->refresh_len;

    return ngx_http_sf_oauth_parse_check_token(&s);
}


static ngx_int_t
ngx_http_sf_oauth_json_str(cJSON *obj, const char *name, u_char *dst,
    size_t max, size_t *len, ngx_uint_t optional)
{
    size_t  n;
    cJSON  *item;

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


/* AES-256-GCM of a whole buffer; the magic and context are authenticated */

static ngx_int_t
ngx_http_sf_oauth_crypt(u_char *key, ngx_str_t *context, ngx_uint_t encrypt,
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
         && EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce,
                              encrypt ? 1 : 0) == 1
         && EVP_CipherUpdate(ctx, NULL, &n,
                             (u_char *) NGX_HTTP_SF_OAUTH_MAGIC,
                             NGX_HTTP_SF_OAUTH_MAGIC_LEN) == 1
         && (context == NULL || context->len == 0
             || EVP_CipherUpdate(ctx, NULL, &n, context->data,
                                 (int) context->len) == 1)
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


/* a fingerprint of 16 hex digits; an optional one that is absent is 0 */

static ngx_int_t
ngx_http_sf_oauth_json_fp(cJSON *obj, const char *name, uint64_t *fp,
    ngx_uint_t optional)
{
    cJSON      *item;
    ngx_int_t   n;
    ngx_uint_t  i;

    item = cJSON_GetObjectItemCaseSensitive(obj, name);

    if (item == NULL && optional) {
        *fp = 0;
        return NGX_OK;
    }

    if (!cJSON_IsString(item) || ngx_strlen(item->valuestring) != 16) {
        return NGX_ERROR;
    }

    for (i = 0; i < sizeof(uint64_t); i++) {
        n = ngx_hextoi((u_char *) item->valuestring + 2 * i, 2);
        if (n == NGX_ERROR) {
            return NGX_ERROR;
        }

        ((u_char *) fp)[i] = (u_char) n;
    }

    return NGX_OK;
}
