"""`shrinkteanet launch`: data-parallel jobs on MXNet's parameter server (dist kvstore)."""

ORDER = 41


def register(sub):
    p = sub.add_parser(
        "launch", help="run a command on N workers + S servers (MXNet dist kvstore, dmlc tracker)",
        description="Start a scheduler, SERVERS parameter servers and WORKERS workers running the command after "
                    "`--`, e.g. `shrinkteanet launch -n 2 -s 1 -- shrinkteanet train --config mfnr_stn "
                    "--kvstore dist_sync` (dist_device_sync for GPU workers).  Local processes by default; --hosts FILE "
                    "uses ssh (each node's command quoted once, --env pairs exported, remote nodes stopped with "
                    "the job).")
    p.add_argument("-n", "--num-workers", type=int, required=True, help="number of workers")
    p.add_argument("-s", "--num-servers", type=int, default=None, help="number of servers (default: = workers)")
    p.add_argument("-H", "--hosts", default=None, help="host file (one host[:port] per line) for the ssh launcher")
    p.add_argument("--launcher", choices=("local", "ssh"), default=None,
                   help="local processes (default) or ssh to the hosts of --hosts")
    p.add_argument("--env", action="append", default=[], metavar="NAME:VALUE", help="environment for every node")
    p.add_argument("--host-ip", default=None,
                   help="ssh: this machine's address as the nodes reach it (default: guessed from the host name)")
    p.add_argument("--timeout", type=float, default=0, help="stop the job after this many seconds (0: never)")
    p.add_argument("command", nargs="+", help="the command each node runs (after --)")
    p.set_defaults(func=run)


def run(args):
    from shrinkteanet.training.launch import launch

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    rc = launch(command, args.num_workers, args.num_servers, hosts=args.hosts, launcher=args.launcher,
                env=args.env, timeout=args.timeout, host_ip=args.host_ip)
    print(f"launch: {args.num_workers} worker(s), "
          f"{args.num_workers if args.num_servers is None else args.num_servers} server(s): "
          f"{'finished' if rc == 0 else f'failed with status {rc}'}")
    return rc
