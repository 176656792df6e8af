/* dhcp.h: the guest's DHCPv4 client (dhcp.c), used by d2vinit.c. */
#ifndef D2V_DHCP_H
#define D2V_DHCP_H

/* Bring every NIC up and start the client (one thread); lease files go to
 * NETDIR. Returns the number of NICs it serves. */
int dhcp_start(const char *netdir);

/* Wait until every NIC has a lease or SECONDS have passed; returns how many
 * NICs have none. */
int dhcp_wait(double seconds);

/* The number of NICs served. */
int dhcp_nics(void);

#endif
