/* A real, empty kernel module standing in for one NVIDIA module; it is never loaded. */
#include <linux/init.h>
#include <linux/module.h>

static int __init grid_sim_init(void) { return 0; }
static void __exit grid_sim_exit(void) { }
module_init(grid_sim_init);
module_exit(grid_sim_exit);

MODULE_LICENSE(GRID_SIM_LICENSE);
MODULE_VERSION(GRID_SIM_VERSION);
MODULE_DESCRIPTION("grid-sim stand-in for an NVIDIA kernel module (never loaded)");
