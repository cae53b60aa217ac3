/* Stand-in libnvidia-ml.so.1 of the fake GRID driver: a real ELF, answers nothing real. */
#define VERSION_STRING GRID_SIM_VERSION
int nvmlInit_v2(void) { return 0; }
int nvmlInit(void) { return 0; }
int nvmlShutdown(void) { return 0; }
int nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    const char *v = VERSION_STRING;
    unsigned int i = 0;
    for (; v[i] && i + 1 < length; i++)
        version[i] = v[i];
    if (length)
        version[i] = 0;
    return 0;
}
