
/*
 * libFuzzer target: the state file decoder.  With the first byte even, the
 * rest is the file itself (magic, nonce, tag, ciphertext); odd, the rest
 * is encrypted with the key first, so that the JSON reader behind the
 * decryption is reached too.  Whatever the file, it is refused with a
 * reason, or its records are within their bounds and fit a header.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_sf_oauth.h"

#include <openssl/evp.h>


static u_char     key[32] = { 0x5a, 0x5a, 0x5a, 0x5a };
static ngx_log_t  fuzz_log;


static u_char *
encrypt(const uint8_t *in, size_t len, size_t *out_len)
{
    int              n;
    u_char          *out, nonce[12] = { 1 };
    EVP_CIPHER_CTX  *ctx;

    out = malloc(36 + len + 16);
    ctx = EVP_CIPHER_CTX_new();

    memcpy(out, "SFOAUTH1", 8);
    memcpy(out + 8, nonce, 12);

    EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce);
    EVP_EncryptUpdate(ctx, NULL, &n, (u_char *) "SFOAUTH1", 8);
    EVP_EncryptUpdate(ctx, out + 36, &n, in, (int) len);
    EVP_EncryptFinal_ex(ctx, out + 36 + n, &n);
    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, out + 20);
    EVP_CIPHER_CTX_free(ctx);

    *out_len = 36 + len;

    return out;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                    *file;
    size_t                     len;
    ngx_str_t                  s;
    ngx_uint_t                 i, n;
    const char                *why;
    ngx_http_sf_oauth_node_t  *recs;

    if (size == 0) {
        return 0;
    }

    if (data[0] & 1) {
        file = encrypt(data + 1, size - 1, &len);

    } else {
        len = size - 1;
        file = malloc(len ? len : 1);
        memcpy(file, data + 1, len);
    }

    why = NULL;

    if (ngx_http_sf_oauth_codec_decode(key, NULL, file, len, &recs, &n, &why,
                                       &fuzz_log)
        != NGX_OK)
    {
        if (why == NULL || recs != NULL) {
            abort();
        }

        free(file);
        return 0;
    }

    for (i = 0; i < n; i++) {
        s.data = recs[i].token;
        s.len = recs[i].token_len;

        if (recs[i].name_len == 0
            || recs[i].name_len > NGX_HTTP_SF_OAUTH_NAME_MAX
            || recs[i].token_len > NGX_HTTP_SF_OAUTH_TOKEN_MAX
            || recs[i].refresh_len > NGX_HTTP_SF_OAUTH_REFRESH_MAX
            || recs[i].url_len > NGX_HTTP_SF_OAUTH_URL_MAX
            || (s.len && ngx_http_sf_oauth_parse_check_token(&s) != NGX_OK))
        {
            abort();
        }
    }

    free(recs);
    free(file);

    return 0;
}
