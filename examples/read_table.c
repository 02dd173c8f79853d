/* Reads keys from a kvs table through the C ABI.
 *   read_table TABLE KEY...     (shm prefix from KVS_SHM_PREFIX, default "kvs.")
 * Prints each value, or "(absent)". Exit status 0, or 1 on an error. */
#include <kvs/kvs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s TABLE KEY...\n", argv[0]);
    return 2;
  }
  /* NULL: "kvs.", KVS_SHM_DIR (else /dev/shm) and KVS_SOCKET (else
   * /run/kvs/kvsd.sock, asked when the table is not in that directory) */
  kvs_open_options options = {getenv("KVS_SHM_PREFIX"), NULL, NULL, KVS_HANDOVER_AUTO};
  kvs_table *table;
  int rc = kvs_open(argv[1], &options, &table);
  if (rc != KVS_OK) {
    fprintf(stderr, "kvs_open: %s (%s)\n", kvs_last_error(), kvs_strerror(rc));
    return 1;
  }
  kvs_txn *txn;
  rc = kvs_read_begin(table, &txn);
  if (rc != KVS_OK) {
    fprintf(stderr, "kvs_read_begin: %s\n", kvs_last_error());
    kvs_close(table);
    return 1;
  }
  for (int i = 2; i < argc; ++i) {
    const void *value;
    size_t len;
    rc = kvs_get(txn, argv[i], strlen(argv[i]), &value, &len);
    if (rc == KVS_OK) {
      printf("%s\t%.*s\n", argv[i], (int)len, (const char *)value); /* zero-copy */
    } else if (rc == KVS_ENOTFOUND) {
      printf("%s\t(absent)\n", argv[i]);
    } else {
      fprintf(stderr, "kvs_get: %s\n", kvs_last_error());
      break;
    }
  }
  kvs_read_end(txn); /* values are invalid from here on */
  kvs_close(table);
  return rc == KVS_OK || rc == KVS_ENOTFOUND ? 0 : 1;
}
