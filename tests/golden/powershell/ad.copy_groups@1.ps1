# steward-op: ad.copy_groups@1
# Steward PowerShell template ad.copy_groups, version 1: add an AD user to every group of a template user, except privileged (adminCount) groups.
# Cmdlets: Get-ADUser, Get-ADGroup, Add-ADGroupMember.
# Runs directly on the target machine.
# Every value comes from $StewardPayload (base64 of UTF-8 JSON) decoded below; none is part of this text.
#Requires -Version 5.1
$ErrorActionPreference = 'Stop'
$StewardTemplate = 'ad.copy_groups@1'
$StewardPayload = ''
$StewardOp = {
    param([string]$StewardPayload)
    $StewardTemplate = 'ad.copy_groups@1'
    $ErrorActionPreference = 'Stop'
    $ProgressPreference = 'SilentlyContinue'
    $StewardPrior = $null
    $p = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($StewardPayload)) | ConvertFrom-Json
    $StewardSecrets = @(foreach ($StewardName in @('password')) {
        $StewardProp = $p.PSObject.Properties[$StewardName]
        if ($null -ne $StewardProp -and $null -ne $StewardProp.Value -and [string]$StewardProp.Value -ne '') { [string]$StewardProp.Value }
    })
    function Test-StewardValue {
        param([string]$Name)
        $prop = $p.PSObject.Properties[$Name]
        return ($null -ne $prop -and $null -ne $prop.Value)
    }
    function Get-StewardValue {
        param([string]$Name)
        $prop = $p.PSObject.Properties[$Name]
        if ($null -eq $prop) { return $null }
        return $prop.Value
    }
    function Hide-StewardSecret {
        param([string]$Text)
        foreach ($StewardSecret in $StewardSecrets) { $Text = $Text.Replace($StewardSecret, '[redacted]') }
        return $Text
    }
    function Get-StewardCategory {
        param($ErrorRecord)
        $type = $ErrorRecord.Exception.GetType().Name
        $text = [string]$ErrorRecord.Exception.Message
        if ($type -match 'ADIdentityNotFoundException|ManagementObjectNotFoundException|ItemNotFoundException') { return 'not_found' }
        if ($type -match 'ADIdentityAlreadyExistsException') { return 'already_exists' }
        if ($type -match 'ADPasswordComplexityException') { return 'password_policy' }
        if ($type -match 'PSRemotingTransportException') { return 'winrm_unreachable' }
        if ($type -match 'CommandNotFoundException') { return 'module_missing' }
        if ($text -match 'was not loaded because no valid module file was found') { return 'module_missing' }
        if ($text -match 'AAD is busy') { return 'sync_busy' }
        return 'error'
    }
    function Out-StewardResult {
        param([string]$Status, $Result = $null, $Prior = $null, [string]$Reason = '', [string]$Category = '')
        $StewardOut = [ordered]@{
            template = $StewardTemplate
            status = $Status
            result = $Result
            prior = $Prior
            reason = (Hide-StewardSecret $Reason)
            category = $Category
        }
        return ('STEWARD-RESULT ' + (ConvertTo-Json -InputObject $StewardOut -Compress -Depth 10))
    }
    try {
        Import-Module ActiveDirectory
        $StewardAd = @{}
        if (Test-StewardValue 'server') { $StewardAd['Server'] = [string](Get-StewardValue 'server') }
        function Get-StewardParentDn {
            param([string]$Dn)
            return ($Dn -replace '^(?:\\.|[^\\,])+,', '')
        }
        function Find-StewardAdUser {
            param([string]$Identity)
            $props = @('DisplayName', 'GivenName', 'Surname', 'mail', 'Manager', 'MemberOf', 'LockedOut', 'whenCreated', 'Title', 'Department')
            if ($Identity -match '@' -and $Identity -notmatch '=') {
                $StewardUpn = $Identity
                $found = @(Get-ADUser @StewardAd -Filter 'UserPrincipalName -eq $StewardUpn' -Properties $props)
                if ($found.Count -gt 1) { throw ('More than one AD user has the user principal name ' + $Identity + '.') }
                if ($found.Count -eq 1) { return $found[0] }
                return $null
            }
            try {
                return (Get-ADUser @StewardAd -Identity $Identity -Properties $props)
            } catch {
                if ($_.Exception.GetType().Name -eq 'ADIdentityNotFoundException') { return $null }
                throw
            }
        }
        function Get-StewardAdUser {
            param([string]$Identity)
            $found = Find-StewardAdUser -Identity $Identity
            if ($null -eq $found) { throw (New-Object System.Management.Automation.ItemNotFoundException ("Cannot find an object with identity: '" + $Identity + "'.")) }
            return $found
        }
        function ConvertTo-StewardAdUser {
            param($User)
            $created = $null
            if ($null -ne $User.whenCreated) { $created = $User.whenCreated.ToUniversalTime().ToString('o') }
            return [ordered]@{
                distinguished_name = [string]$User.DistinguishedName
                parent = (Get-StewardParentDn ([string]$User.DistinguishedName))
                object_guid = [string]$User.ObjectGUID
                sam_account_name = [string]$User.SamAccountName
                user_principal_name = [string]$User.UserPrincipalName
                enabled = [bool]$User.Enabled
                locked_out = [bool]$User.LockedOut
                display_name = $User.DisplayName
                given_name = $User.GivenName
                surname = $User.Surname
                title = $User.Title
                department = $User.Department
                mail = $User.mail
                manager = $User.Manager
                when_created = $created
            }
        }
        $template = Get-StewardAdUser -Identity ([string]$p.template)
        $user = Get-StewardAdUser -Identity ([string]$p.member)
        $has = @($user.MemberOf | ForEach-Object { [string]$_ })
        $added = New-Object System.Collections.ArrayList
        $already = New-Object System.Collections.ArrayList
        $protected = New-Object System.Collections.ArrayList
        $StewardPrior = [ordered]@{ added = $added }
        foreach ($groupDn in @($template.MemberOf | ForEach-Object { [string]$_ })) {
            if ($has -contains $groupDn) {
                $null = $already.Add($groupDn)
                continue
            }
            # Never copy privileged groups (adminCount = 1: Domain Admins, Account Operators, ...).
            $group = Get-ADGroup @StewardAd -Identity $groupDn -Properties adminCount
            if ($group.adminCount -eq 1) {
                $null = $protected.Add($groupDn)
                continue
            }
            Add-ADGroupMember @StewardAd -Identity $groupDn -Members ([string]$user.DistinguishedName) -Confirm:$false
            $null = $added.Add($groupDn)
        }
        $status = 'unchanged'
        if ($added.Count -gt 0) { $status = 'changed' }
        return (Out-StewardResult -Status $status -Result ([ordered]@{ member = [string]$user.DistinguishedName; added = $added; already_member = $already; skipped_privileged = $protected }) -Prior $StewardPrior)
    } catch {
        return (Out-StewardResult -Status 'failed' -Prior $StewardPrior -Reason ([string]$_.Exception.Message) -Category (Get-StewardCategory $_))
    }
}
$StewardLines = @()
try {
    $StewardLines = @(& $StewardOp $StewardPayload)
} catch {
    $StewardLines = @('STEWARD-RESULT ' + (ConvertTo-Json -Compress -InputObject ([ordered]@{ template = $StewardTemplate; status = 'failed'; result = $null; prior = $null; reason = [string]$_.Exception.Message; category = 'error' })))
}
$StewardResult = @($StewardLines | Where-Object { $_ -is [string] -and $_.StartsWith('STEWARD-RESULT ') })
if ($StewardResult.Count -ge 1) {
    Write-Output $StewardResult[$StewardResult.Count - 1]
} else {
    Write-Output ('STEWARD-RESULT ' + (ConvertTo-Json -Compress -InputObject ([ordered]@{ template = $StewardTemplate; status = 'failed'; result = $null; prior = $null; reason = 'the script produced no result line'; category = 'error' })))
}
