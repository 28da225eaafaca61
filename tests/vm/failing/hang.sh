# Never finishes: the host must kill QEMU at the timeout (exit status 3).
. /usr/lib/omnidisk-vm/lib.sh
step hangs
sleep 100000
