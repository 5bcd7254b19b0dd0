// Control experiment for the README's memory per TLS stream: build with (libssl-dev)
//   cc -O2 tests/bench/tls_conn_memory.c -o /tmp/tls_conn_memory -lssl -lcrypto
// and run against a TLS server on 127.0.0.1 (the fake upstream with --tls-cert/--tls-key):
//   /tmp/tls_conn_memory PORT CA_FILE [shared]
// 300 TLS client connections, each with its own SSL_CTX as libcurl 7.88 makes them, all open
// at once after their handshakes: RSS growth per connection.
#include <openssl/ssl.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static long rss(void){FILE*f=fopen("/proc/self/status","r");char l[256];long v=0;while(fgets(l,256,f))if(!strncmp(l,"VmRSS:",6))v=atol(l+6);fclose(f);return v;}
int main(int argc,char**argv){int port=atoi(argv[1]); const char*ca=argv[2]; int n=300; int shared=argc>3;
 SSL_CTX*w=SSL_CTX_new(TLS_client_method()); SSL_free(SSL_new(w));
 SSL_CTX*one=SSL_CTX_new(TLS_client_method()); SSL_CTX_load_verify_locations(one,ca,NULL);
 long b=rss();
 for(int i=0;i<n;i++){int fd=socket(AF_INET,SOCK_STREAM,0);struct sockaddr_in a={0};a.sin_family=AF_INET;a.sin_port=htons(port);a.sin_addr.s_addr=htonl(0x7f000001);
  if(connect(fd,(void*)&a,sizeof a)){perror("connect");return 1;}
  SSL_CTX*c=one; if(!shared){c=SSL_CTX_new(TLS_client_method()); SSL_CTX_load_verify_locations(c,ca,NULL);} 
  SSL_CTX_set_verify(c,SSL_VERIFY_PEER,NULL);
  SSL*s=SSL_new(c); SSL_set_fd(s,fd); SSL_set_tlsext_host_name(s,"127.0.0.1"); unsigned char alpn[]="\x08http/1.1"; SSL_set_alpn_protos(s,alpn,9);
  if(SSL_connect(s)!=1){fprintf(stderr,"handshake failed\n");return 1;}}
 printf("%s SSL_CTX: %.1f KiB per TLS connection\n", shared?"one":"per-connection", (rss()-b)/(double)n);}
